"""Re-layout with jobs in flight (8 -> 16 partitions, 4 -> 8 workers) through the real CLI and real worker
processes: refused while an old worker lives, nothing lost or duplicated after it, every new slot serves, and a
worker still configured for the old layout refuses to start."""

import os
import subprocess
from collections import Counter
from pathlib import Path

from cv_queue.cli.main import LAYOUT_MISMATCH_EXIT
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.names import presence_group
from cv_queue.kafka.admin.topics import describe_topics
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.fleet.layout import Layout, read_layout
from cv_queue.kafka.fleet.presence import live_workers
from cv_queue.messages import EvaluationResult
from cv_queue.settings import QueueSettings
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.kafka.procs import spawn_worker, started, stop_all
from cv_queue_tests.support import read_topic, start_worker, wait_for

NEW_LAYOUT_ENV = {"CVQ_TOPICS__PARTITIONS": "16"}


def _cli(settings: QueueSettings, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVQ_NAMESPACE": settings.namespace}
    return subprocess.run([CV_QUEUE, *args], env=env, capture_output=True, text=True, timeout=timeout_s)


def _partitions(conn, topic: str) -> int:
    return describe_topics(admin_client(conn), [topic])[topic].partitions


def test_grow_8_to_16_with_jobs_in_flight(conn, provisioned, tmp_path: Path):
    settings = provisioned
    names = settings.topic_names
    producer = JobProducer(conn, names.main)
    before = {d.job_id for d in producer.enqueue_batch(sample_jobs(2000, seed=21, prefix="before"))}
    old_logs = [tmp_path / f"old-{slot.name}.log" for slot in settings.slots()]
    old = [spawn_worker(settings, slot.name, log, latency_ms=300, in_flight=4)
           for slot, log in zip(settings.slots(), old_logs, strict=True)]
    new: list[subprocess.Popen] = []
    try:
        wait_for(lambda: all(started(log) for log in old_logs), 90, "the 4 workers of the 8-partition layout")
        wait_for(lambda: len(read_topic(conn, names.results, idle_s=0.3)) >= 200, 60, "the old fleet to work")

        refused = _cli(settings, "fleet", "relayout", "--partitions", "16", "--wait-s", "1")
        assert refused.returncode == 1, refused.stderr
        assert "still alive" in refused.stderr and "worker-0-1-of-8x2" in refused.stderr, refused.stderr
        assert _partitions(conn, names.main) == 8, "a refused re-layout changed the topic"

        stop_all(*old)
        assert [p.returncode for p in old] == [0, 0, 0, 0]
        in_flight = before - {m.key().decode() for m in read_topic(conn, names.results, idle_s=0.5)}
        assert in_flight, "the old fleet finished everything: the re-layout ran with no job in flight"

        grown = _cli(settings, "fleet", "relayout", "--partitions", "16")
        assert grown.returncode == 0, grown.stdout + grown.stderr
        for topic in (names.main, names.retry):
            assert f"grew {topic} from 8 to 16 partitions" in grown.stdout
            assert _partitions(conn, topic) == 16
        recorded = read_layout(conn, settings)
        assert recorded is not None and recorded.generation == 2
        assert recorded.layout == Layout(partitions=16, partitions_per_worker=2)
        assert recorded.earlier == [Layout(partitions=8, partitions_per_worker=2)]  # what workers fence

        stale_log = tmp_path / "stale.log"
        stale = spawn_worker(settings, "0-1", stale_log)
        assert stale.wait(60) == LAYOUT_MISMATCH_EXIT
        stale_text = stale_log.read_text()
        assert "16 partitions, 2 per worker" in stale_text and "8 partitions, 2 per worker" in stale_text
        assert "CVQ_TOPICS__PARTITIONS=16" in stale_text and "Traceback" not in stale_text

        new_slots = [s.name for s in recorded.layout.slots()]
        new_logs = [tmp_path / f"new-{slot}.log" for slot in new_slots]
        new = [spawn_worker(settings, slot, log, latency_ms=5, in_flight=8, extra_env=NEW_LAYOUT_ENV)
               for slot, log in zip(new_slots, new_logs, strict=True)]
        wait_for(lambda: all(started(log) for log in new_logs), 120, "the 8 workers of the 16-partition layout")
        after = JobProducer(conn, names.main).enqueue_batch(  # a new producer: an old one refreshes metadata late
            sample_jobs(1000, seed=22, prefix="after"))
        assert max(d.partition for d in after) >= 8, "the producer did not see the grown topic"
        wanted = before | {d.job_id for d in after}
        wait_for(lambda: {m.key().decode() for m in read_topic(conn, names.results, idle_s=0.5)} >= wanted, 120,
                 "a result for every job, queued before and after the re-layout")
    finally:
        stop_all(*old + new)
    assert [p.returncode for p in new] == [0] * len(new)

    results = read_topic(conn, names.results, idle_s=1.0)
    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == wanted and max(per_job.values()) == 1, "lost or duplicated across the re-layout"
    new_pids = {str(p.pid) for p in new}
    served = {EvaluationResult.model_validate_json(m.value()).worker for m in results}
    served_by_new = {worker.rsplit(":", 1)[1] for worker in served if worker.split(":")[-2] in new_pids}
    assert served_by_new == set(new_slots), "a slot of the new layout served no job"


def test_workers_are_seen_alive_through_the_presence_group_not_the_worker_group(conn, provisioned):
    """Workers assign their partitions, so the worker group never has members; the presence group has one per
    live worker, and none once they stopped."""
    settings = provisioned
    admin = admin_client(conn)
    running = [start_worker(conn, settings, slot) for slot in settings.slots()[:2]]
    try:
        wait_for(lambda: len(live_workers(admin, settings)) == 2, 60, f"2 members of {presence_group(settings)}")
        worker_group = admin.describe_consumer_groups([settings.group_id])[settings.group_id].result()
        assert worker_group.members == []
        assert sorted(w.client_id.rsplit("-worker-", 1)[1] for w in live_workers(admin, settings)) == \
            ["0-1-of-8x2", "2-3-of-8x2"]
    finally:
        for worker in running:
            worker.stop.set()
        for worker in running:
            worker.join()
    assert live_workers(admin, settings) == []  # a stopped worker leaves at once, not at its session timeout


def test_topics_grown_outside_a_relayout_are_refused_until_one_records_them(conn, provisioned, tmp_path: Path):
    """A re-layout that died between growing the topics and recording the layout (simulated: the topics grown by
    hand) leaves partitions no recorded slot reads: a worker refuses, and a relayout to that count repairs it."""
    from confluent_kafka.admin import NewPartitions

    settings = provisioned
    first = spawn_worker(settings, settings.slots()[0].name, tmp_path / "first.log")
    try:
        wait_for(lambda: started(tmp_path / "first.log"), 90, "the first worker to record the 8-partition layout")
    finally:
        stop_all(first)
    admin = admin_client(conn)
    for topic in (settings.topic_names.main, settings.topic_names.retry):
        admin.create_partitions([NewPartitions(topic, 12)])[topic].result()
    refused = spawn_worker(settings, settings.slots()[0].name, tmp_path / "refused.log")
    assert refused.wait(90) == LAYOUT_MISMATCH_EXIT
    message = (tmp_path / "refused.log").read_text()
    assert "has 12 partitions but the recorded layout" in message and "relayout --partitions 12" in message

    repaired = _cli(settings, "fleet", "relayout", "--partitions", "12", "--per-worker", "2")
    assert repaired.returncode == 0, repaired.stderr
    recorded = read_layout(conn, settings)
    assert recorded is not None and recorded.layout == Layout(partitions=12, partitions_per_worker=2)


def test_a_first_worker_with_wrong_settings_records_nothing(conn, provisioned, tmp_path: Path):
    """No layout recorded yet, 8-partition topics, a worker configured for 4: it refuses and leaves no record, so the
    correctly configured workers that follow are not refused for its mistake."""
    settings = provisioned
    wrong = spawn_worker(settings, "0-1", tmp_path / "wrong.log", extra_env={"CVQ_TOPICS__PARTITIONS": "4"})
    assert wrong.wait(90) == LAYOUT_MISMATCH_EXIT
    assert "nothing was recorded" in (tmp_path / "wrong.log").read_text()
    assert read_layout(conn, settings) is None
    right = spawn_worker(settings, "0-1", tmp_path / "right.log")
    try:
        wait_for(lambda: started(tmp_path / "right.log") or right.poll() is not None, 90, "the right worker to start")
        assert right.poll() is None, (tmp_path / "right.log").read_text()[-2000:]
    finally:
        stop_all(right)
    recorded = read_layout(conn, settings)
    assert recorded is not None and recorded.layout == Layout(partitions=8, partitions_per_worker=2)
