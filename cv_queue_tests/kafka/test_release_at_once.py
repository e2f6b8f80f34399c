"""Results the moment a job is done, and no paid call made twice: real worker processes, a slow job at the head of
each partition, handler calls counted per job id from the handler's own call log.

- A finished job's result is readable (read_committed) while an older job of its partition still runs.
- A graceful stop (SIGTERM) commits every finished job, not only the prefix: the next worker runs none of them
  again, only the jobs that were still running.
- SIGKILL at each point of the commit path, with finished work above a held committed offset: after a restart every
  job has exactly one result, nothing the victim committed runs again, and the jobs run twice are only those in
  flight at the kill (called, and not yet in a committed transaction). Holding outputs behind the slow job would
  commit none of the victim's fast jobs; forgetting the map at start-up would run its committed ones again.
"""

import json
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicPartition

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.worker.offset_map import decode
from cv_queue.messages import EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.kafka.procs import spawn_worker, stop_all
from cv_queue_tests.kafka.test_crash_points import read_all, wait_for_offsets_at_end
from cv_queue_tests.support import read_topic, unique, wait_for

FAST_JOBS = 320  # about 80 land on the slot under test
IN_FLIGHT = 4
COMMIT_MAX_RECORDS = 10


def enqueue_slow_heads_then_fast(conn: KafkaConnection, settings: QueueSettings, slow_ms: int,
                                 seed: int) -> tuple[set[str], set[str]]:
    """One slow job at the head of each of the first slot's main partitions, then FAST_JOBS fast ones. Returns the
    slow and the fast job ids of the slot."""
    slot = settings.slots()[0]
    slow = list(sample_jobs(len(slot.partitions), seed=seed, prefix=unique("slow-"),
                            labels_for={i: {"simulate": f"sleep:{slow_ms}"} for i in range(len(slot.partitions))}))
    producer = Producer(conn.client_config())
    for job, partition in zip(slow, slot.partitions, strict=True):
        producer.produce(settings.topic_names.main, key=job.key, value=job.to_bytes(), partition=partition)
    assert producer.flush(30) == 0
    deliveries = JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(FAST_JOBS, seed=seed))
    fast = {d.job_id for d in deliveries if d.partition in slot.partitions}
    assert fast, "no fast job landed on the slot under test"
    return {j.job_id for j in slow}, fast


def handler_env(call_log: Path, **extra: str) -> dict[str, str]:
    return {"CVQ_WORKER__HANDLER_OPTIONS": json.dumps({"latency_ms": 20, "call_log": str(call_log)}),
            "CVQ_WORKER__COMMIT_MAX_RECORDS": str(COMMIT_MAX_RECORDS), **extra}


def calls(call_log: Path) -> Counter[str]:
    return Counter(line for line in call_log.read_text().splitlines() if line)


def start_again_and_read(conn: KafkaConnection, settings: QueueSettings, log: Path,
                         call_log: Path) -> tuple[subprocess.Popen, Counter[str]]:
    """The first slot's worker started again; once every offset is committed, the committed results per job id.
    The caller stops the process (it is stopped here only when waiting fails)."""
    proc = spawn_worker(settings, settings.slots()[0].name, log, in_flight=IN_FLIGHT, extra_env=handler_env(call_log))
    try:
        wait_for_offsets_at_end(conn, settings)
        return proc, Counter(m.key().decode() for m in read_all(conn, settings))
    except BaseException:
        stop_all(proc)
        raise


def result_ids(conn: KafkaConnection, settings: QueueSettings) -> Counter[str]:
    return Counter(m.key().decode() for m in read_topic(conn, settings.topic_names.results, idle_s=0.5,
                                                        timeout_s=30))


@pytest.mark.chaos
def test_results_flow_past_a_slow_job_and_a_graceful_stop_keeps_every_finished_one(conn, provisioned,
                                                                                   tmp_path: Path):
    settings = provisioned
    slot = settings.slots()[0]
    slow, fast = enqueue_slow_heads_then_fast(conn, settings, slow_ms=20_000, seed=41)
    call_log = tmp_path / "calls.log"
    first = spawn_worker(settings, slot.name, tmp_path / "first.log", in_flight=IN_FLIGHT,
                         extra_env=handler_env(call_log, CVQ_WORKER__SHUTDOWN_GRACE_MS="500"))
    second = None
    try:
        # Every fast result is readable while the slow jobs at the heads still run (they take 20 s; in_order
        # holds every one of these results until they end, so the slow ones would be readable first).
        wait_for(lambda: fast <= set(result_ids(conn, settings)), 90, "the fast results behind the slow jobs")
        assert not slow & set(result_ids(conn, settings)), "the fast results waited for the slow jobs"
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
        # The stop committed the slow jobs' offsets, with every finished offset above them in the map.
        committed = _committed(conn, settings, [(settings.topic_names.main, p) for p in slot.partitions])
        for tp in committed:
            settled = decode(tp.metadata, tp.offset)
            assert settled is not None and settled.incomplete == (), (tp.topic, tp.partition, tp.metadata)

        second, results = start_again_and_read(conn, settings, tmp_path / "second.log", call_log)
    finally:
        stop_all(first, second)
    assert set(results) == slow | fast and max(results.values()) == 1
    ran = calls(call_log)
    assert {job for job, n in ran.items() if n > 1} == slow  # only the jobs still running at the stop ran again
    assert "already done" in (tmp_path / "second.log").read_text()  # it resumed from the map


@pytest.mark.chaos
@pytest.mark.parametrize("point", ["after_produce", "after_send_offsets", "after_commit"])
def test_sigkill_at_each_commit_point_redoes_only_what_was_in_flight(conn, provisioned, tmp_path: Path, point):
    settings = provisioned
    slot = settings.slots()[0]
    slow, fast = enqueue_slow_heads_then_fast(conn, settings, slow_ms=10_000, seed=42)
    call_log = tmp_path / "calls.log"
    fault = f"{point}@6:kill"
    # Transactions only by count (COMMIT_MAX_RECORDS), never by the clock, so the victim has finished at least
    # 5 * COMMIT_MAX_RECORDS fast jobs when its 6th transaction is killed, however slow the machine.
    victim = spawn_worker(settings, slot.name, tmp_path / "victim.log", in_flight=IN_FLIGHT,
                          extra_env=handler_env(call_log, CVQ_FAULT=fault, CVQ_WORKER__COMMIT_INTERVAL_MS="600000",
                                                CVQ_WORKER__PROGRESS_INTERVAL_S="600"))
    restarted = None
    try:
        assert victim.wait(120) == -signal.SIGKILL
        assert f"CVQ_FAULT={fault}: injecting it now" in (tmp_path / "victim.log").read_text(errors="replace")
        called_by_victim = set(calls(call_log))
        restarted, results = start_again_and_read(conn, settings, tmp_path / "restarted.log", call_log)
        committed_by_victim = {r.job_id for r in committed_results(conn, settings) if r.worker_pid == victim.pid}
    finally:
        stop_all(victim, restarted)
    assert set(results) == slow | fast, f"lost {len((slow | fast) - set(results))} job(s)"
    assert max(results.values()) == 1, f"duplicated: {[j for j, n in results.items() if n > 1][:5]}"
    rerun = {job for job, n in calls(call_log).items() if n > 1}
    # Nothing the victim committed ran again: with the map, a restart skips every committed job.
    assert not rerun & committed_by_victim, f"committed jobs ran again: {sorted(rerun & committed_by_victim)[:5]}"
    # So what ran again is what was in flight at the kill: called by the victim and not yet in a committed
    # transaction (running, finished since its last transaction, or in the transaction the kill ended).
    in_flight_at_kill = called_by_victim - committed_by_victim
    assert rerun <= in_flight_at_kill
    # And the victim committed the fast jobs it finished above the slow heads while those still ran: at least its
    # first 5 transactions' worth (transactions go by count only here). Holding them behind the slow jobs, as a
    # plain watermark does, would have committed none of them and redone them all.
    assert len(committed_by_victim & fast) >= 5 * COMMIT_MAX_RECORDS - IN_FLIGHT, len(committed_by_victim)
    assert not committed_by_victim & slow
    started_slow = slow & called_by_victim
    assert started_slow and started_slow <= rerun  # still running at the kill (10 s long), so run again


@dataclass(frozen=True)
class CommittedResult:
    job_id: str
    worker_pid: int


def committed_results(conn: KafkaConnection, settings: QueueSettings) -> list[CommittedResult]:
    """Every committed result, with the pid of the worker process that produced it."""
    decoded = (EvaluationResult.model_validate_json(m.value()) for m in read_all(conn, settings))
    return [CommittedResult(r.job_id, int(r.worker.split(":")[1])) for r in decoded]


def _committed(conn: KafkaConnection, settings: QueueSettings, partitions: list[tuple[str, int]]) -> list:
    from confluent_kafka import Consumer

    consumer = Consumer({**conn.client_config(), "group.id": settings.group_id, "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    try:
        return consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=30)
    finally:
        consumer.close()


@pytest.mark.chaos
def test_an_aborted_transaction_is_redone_with_its_outputs_and_no_handler_runs_again(conn, provisioned,
                                                                                    tmp_path: Path):
    """The broker refuses a request of the 3rd transaction (an abortable error, after its outputs were sent): the
    worker aborts it and commits the same outputs in the next one. Every job is called once, and has one result."""
    settings = provisioned
    slot = settings.slots()[0]
    slow, fast = enqueue_slow_heads_then_fast(conn, settings, slow_ms=2_000, seed=43)
    call_log = tmp_path / "calls.log"
    fault = "after_produce@3:abortable"
    worker_proc = spawn_worker(settings, slot.name, tmp_path / "worker.log", in_flight=IN_FLIGHT,
                               extra_env=handler_env(call_log, CVQ_FAULT=fault))
    try:
        wait_for_offsets_at_end(conn, settings)
        results = Counter(m.key().decode() for m in read_all(conn, settings))
    finally:
        stop_all(worker_proc)
    log_text = (tmp_path / "worker.log").read_text(errors="replace")
    assert f"CVQ_FAULT={fault}: injecting it now" in log_text and "injected abortable error" in log_text
    assert set(results) == slow | fast and max(results.values()) == 1
    ran = calls(call_log)
    assert set(ran) == slow | fast and max(ran.values()) == 1, [j for j, n in ran.items() if n > 1][:5]
    assert worker_proc.returncode == 0
