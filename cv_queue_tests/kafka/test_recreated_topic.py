"""Committed offsets outside their partition's log (issue 16, item 4), with real worker processes.

- A topic deleted and recreated under the worker group's committed offsets. Kafka drops a deleted topic's committed
  offsets, but a worker that ran across the recreation commits its old log's offsets again: the group's offset then
  lies above the new log's end. Before, the fetch restarted at 0 under it, the tracker refused that (ValueError) and
  the worker crashed at every start. Now the start names topic, partition, committed offset and the log's bounds
  (exit 10) under the default worker.offset_reset=fail, and `earliest` runs the new records exactly once.
- Records deleted below the committed offset (retention; DeleteRecords here): refused the same way by default;
  `earliest` runs what the log still holds, once.
- A topic recreated under a running worker ends it with exit 10, never a crash out of its loop."""

import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from cv_queue.kafka.admin.lag import group_lag
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.failures import EXIT_TOPIC_STATE
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.messages import EvaluationJob
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.chaos.partitioning import jobs_on_partition
from cv_queue_tests.kafka.procs import spawn_worker, started, stop_all
from cv_queue_tests.support import read_topic, results_by_job, wait_for

OLD_PER_PARTITION = 12
NEW_PER_PARTITION = 3  # fewer than the committed offset: the new log ends below it


def recreate_topic(conn: KafkaConnection, settings: QueueSettings, topic: str) -> None:
    """Delete `topic` and create it again from its spec (empty, same partitions), as an operator's mistake would."""
    admin = admin_client(conn)
    admin.delete_topics([topic], operation_timeout=30)[topic].result(60)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, 60, f"{topic} to be deleted")
    spec = [s for s in topic_specs(settings) if s.name == topic]
    deadline = time.monotonic() + 60
    while True:  # the controller may still be removing the old partitions: "marked for deletion"
        try:
            provision(admin, spec)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _jobs(settings: QueueSettings, prefix: str, per_partition: int, seed: int) -> list[EvaluationJob]:
    partitions = settings.topics.partitions
    return [job for p in settings.slots()[0].partitions
            for job in jobs_on_partition(p, partitions, per_partition, seed=seed + p, prefix=prefix)]


def _committed(conn: KafkaConnection, settings: QueueSettings) -> dict[int, int | None]:
    slot = settings.slots()[0]
    lag = group_lag(admin_client(conn), settings.group_id, settings.topic_names.main, list(slot.partitions))
    return {x.partition: x.committed for x in lag}


def _serve_and_stop(conn: KafkaConnection, settings: QueueSettings, log: Path, expect_results: int) -> None:
    """One worker for slot 0-1 until every job of the old log has its result and its offset committed."""
    slot = settings.slots()[0]
    proc = spawn_worker(settings, slot.name, log)
    try:
        read_topic(conn, settings.topic_names.results, expect=expect_results, timeout_s=90)
        wait_for(lambda: all(c == OLD_PER_PARTITION for c in _committed(conn, settings).values()), 60,
                 "the old log's offsets to be committed")
    finally:
        stop_all(proc)
    assert proc.returncode == 0, log.read_text()


def _commit_as_the_group(conn: KafkaConnection, settings: QueueSettings, offset: int) -> None:
    """Commit `offset` on the slot's main partitions for the worker group, as a worker that ran across the topic's
    recreation does with its old log's offsets (the group has no members: workers assign, so any client may)."""
    consumer = Consumer({**conn.client_config(), "group.id": settings.group_id, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(settings.topic_names.main, p, offset)
                                 for p in settings.slots()[0].partitions], asynchronous=False)
    finally:
        consumer.close()


def _refused_start(settings: QueueSettings, log: Path) -> str:
    """A worker started under the default offset_reset=fail: it must exit 10 at start; returns its log."""
    refused = spawn_worker(settings, settings.slots()[0].name, log)
    try:
        code = refused.wait(90)  # before: it crashed with a ValueError at its first fetch, or ran on
    finally:
        stop_all(refused)
    text = log.read_text(errors="replace")
    assert code == EXIT_TOPIC_STATE, text
    assert "CVQ_WORKER__OFFSET_RESET=earliest" in text and "Traceback" not in text and not started(log)
    return text


def test_a_recreated_topic_stops_the_start_by_default_and_earliest_runs_its_records_exactly_once(conn, provisioned,
                                                                                              tmp_path):
    settings = provisioned
    main = settings.topic_names.main
    slot = settings.slots()[0]
    JobProducer(conn, main).enqueue_batch(_jobs(settings, "old", OLD_PER_PARTITION, seed=40))
    _serve_and_stop(conn, settings, tmp_path / "first.log", expect_results=len(slot.partitions) * OLD_PER_PARTITION)

    recreate_topic(conn, settings, main)
    new = _jobs(settings, "new", NEW_PER_PARTITION, seed=50)
    JobProducer(conn, main).enqueue_batch(new)
    _commit_as_the_group(conn, settings, OLD_PER_PARTITION)

    text = _refused_start(settings, tmp_path / "refused.log")
    assert f"committed offset {OLD_PER_PARTITION} on {main}[" in text
    assert f"log now runs from offset 0 (log start) to {NEW_PER_PARTITION} (log end)" in text
    assert "deleted and recreated" in text
    assert all(c == OLD_PER_PARTITION for c in _committed(conn, settings).values()), "the refusal committed something"

    reset_env = {"CVQ_WORKER__OFFSET_RESET": "earliest"}
    reset = spawn_worker(settings, slot.name, tmp_path / "reset.log", extra_env=reset_env)
    try:
        wait_for(lambda: all(results_by_job(conn, settings, idle_s=2)[j.job_id] for j in new), 90,
                 "a result for every job of the recreated topic")
        wait_for(lambda: all(c == NEW_PER_PARTITION for c in _committed(conn, settings).values()), 60,
                 "the new log's offsets to be committed")
    finally:
        stop_all(reset)
    assert reset.returncode == 0
    assert "CVQ_WORKER__OFFSET_RESET=earliest: starting at the log start 0" in (tmp_path / "reset.log").read_text()

    # A restart with the policy still set finds the offsets inside the log: nothing is reset, nothing runs twice.
    again_log = tmp_path / "again.log"
    again = spawn_worker(settings, slot.name, again_log, extra_env=reset_env)
    try:
        wait_for(lambda: started(again_log), 60, "the second worker to start")
        time.sleep(3)
    finally:
        stop_all(again)
    assert again.returncode == 0 and "OFFSET_RESET" not in again_log.read_text()
    per_job = results_by_job(conn, settings, idle_s=2)
    assert {j.job_id: per_job[j.job_id] for j in new} == {j.job_id: 1 for j in new}


def test_records_deleted_below_the_committed_offset_stop_the_start_and_earliest_runs_what_is_left_once(
        conn, provisioned, tmp_path):
    settings = provisioned
    main = settings.topic_names.main
    slot = settings.slots()[0]
    JobProducer(conn, main).enqueue_batch(_jobs(settings, "old", OLD_PER_PARTITION, seed=80))
    _serve_and_stop(conn, settings, tmp_path / "first.log", expect_results=len(slot.partitions) * OLD_PER_PARTITION)
    late = _jobs(settings, "late", 8, seed=90)  # offsets 12-19 of each partition, never run
    JobProducer(conn, main).enqueue_batch(late)
    # Retention, in effect: everything before offset 16 goes, the four late jobs at 12-15 of each partition too.
    admin = admin_client(conn)
    for future in admin.delete_records([TopicPartition(main, p, 16) for p in slot.partitions],
                                       request_timeout=30).values():
        future.result(30)

    text = _refused_start(settings, tmp_path / "refused.log")
    assert f"committed offset {OLD_PER_PARTITION} on {main}[" in text
    assert "log now runs from offset 16 (log start) to 20 (log end)" in text
    assert "retention or DeleteRecords removed offsets 12-15" in text

    reset_log = tmp_path / "reset.log"
    reset = spawn_worker(settings, slot.name, reset_log, extra_env={"CVQ_WORKER__OFFSET_RESET": "earliest"})
    try:
        wait_for(lambda: all(c == 20 for c in _committed(conn, settings).values()), 90,
                 "the rest of the log to be run and committed")
    finally:
        stop_all(reset)
    assert reset.returncode == 0
    assert "offsets 12-15 are skipped, they are no longer in the log" in reset_log.read_text()
    per_job = results_by_job(conn, settings, idle_s=2)
    deleted, kept = late[0:4] + late[8:12], late[4:8] + late[12:16]  # per partition: offsets 12-15, then 16-19
    assert {j.job_id: per_job[j.job_id] for j in kept} == {j.job_id: 1 for j in kept}
    assert not any(per_job[j.job_id] for j in deleted)


def test_a_topic_recreated_under_a_running_worker_ends_it_with_exit_10_not_a_crash(conn, provisioned, tmp_path):
    settings = provisioned
    main = settings.topic_names.main
    slot = settings.slots()[0]
    JobProducer(conn, main).enqueue_batch(_jobs(settings, "old", OLD_PER_PARTITION, seed=60))
    log = tmp_path / "worker.log"
    proc = spawn_worker(settings, slot.name, log)
    try:
        read_topic(conn, settings.topic_names.results, expect=len(slot.partitions) * OLD_PER_PARTITION, timeout_s=90)
        wait_for(lambda: all(c == OLD_PER_PARTITION for c in _committed(conn, settings).values()), 60,
                 "the old log's offsets to be committed")
        recreate_topic(conn, settings, main)
        JobProducer(conn, main).enqueue_batch(_jobs(settings, "new", NEW_PER_PARTITION, seed=70))
        code = proc.wait(120)
    finally:
        stop_all(proc)
    text = log.read_text(errors="replace")
    assert code == EXIT_TOPIC_STATE, text
    assert f"{main}[" in text and "fetched offset 0" in text and "CVQ_WORKER__OFFSET_RESET" in text
    assert "Traceback" not in text
