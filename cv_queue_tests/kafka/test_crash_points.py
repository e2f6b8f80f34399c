"""Kill the worker at each point of the commit path in turn (CVQ_FAULT), restart it: every job exactly once.

A random SIGKILL (test_worker_crash.py) lands wherever it lands; here the worker process kills itself
deterministically on its 3rd transaction, after the outputs were produced, after the offsets were sent, or
after the commit. Whatever the point, the restarted worker must leave exactly one committed result per job
and the group's committed offsets at the end of the main topic. A worker that committed results and
offsets in two transactions would duplicate the results of the batch killed between the two.

Also the fatal path end to end: an injected fatal producer error makes `cv-queue worker` exit with code 4
after aborting its open transaction (read_committed readers are not held up until transaction.timeout.ms).
The fenced exit code 3 is asserted in test_worker_fencing.py.
"""

import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import group_lag, partition_count
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.client.stall import EXIT_CLIENT_STALLED
from cv_queue.messages import EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.kafka.procs import spawn_worker, started, stop_all
from cv_queue_tests.support import read_topic, wait_for

JOBS = 800  # about 200 land on the slot under test
FAULT_ON_TRANSACTION = 3
# Small transactions (at most 10 results each), so the 3rd one is well inside the run, not its end.
SMALL_TRANSACTIONS = {"CVQ_WORKER__COMMIT_MAX_RECORDS": "10"}
TRANSACTION_TIMEOUT_MS = 60_000
ABORT_VISIBLE_WITHIN_S = 30  # well below the transaction timeout: only an explicit abort ends it this soon


def enqueue_for_slot(conn: KafkaConnection, settings: QueueSettings, seed: int) -> set[str]:
    """Enqueue JOBS sample jobs; return the job ids that landed on the first slot's partitions."""
    slot = settings.slots()[0]
    deliveries = JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(JOBS, seed=seed))
    mine = {d.job_id for d in deliveries if d.partition in slot.partitions}
    assert mine, "no job landed on the slot under test"
    return mine


def restart_and_read(conn: KafkaConnection, settings: QueueSettings, failed: subprocess.Popen,
                     log: Path) -> tuple[subprocess.Popen, list]:
    """Start the slot's worker again (after `failed` ended), wait until every offset is committed and read every
    committed result; both processes are stopped whatever happens."""
    restarted = None
    try:
        restarted = spawn_worker(settings, settings.slots()[0].name, log, latency_ms=20, in_flight=4,
                                 extra_env=SMALL_TRANSACTIONS)
        wait_for_offsets_at_end(conn, settings)
        return restarted, read_all(conn, settings)
    finally:
        stop_all(failed, restarted)


def result_workers(results: list) -> Counter:
    """How many results each worker process (by pid) committed."""
    return Counter(EvaluationResult.model_validate_json(m.value()).worker.split(":")[1] for m in results)


def wait_for_offsets_at_end(conn: KafkaConnection, settings: QueueSettings) -> None:
    """Wait until the group's committed offsets of the slot's main partitions reach the end offsets: every
    job's offset committed (an idle worker commits past the last transaction marker within a second)."""
    admin = admin_client(conn)
    partitions = list(settings.slots()[0].partitions)

    def at_end() -> bool:
        return all(x.committed == x.end_offset for x in group_lag(admin, settings.group_id,
                                                                  settings.topic_names.main, partitions))

    wait_for(at_end, 120, "the worker group's committed offsets to reach the end of the main topic")


def read_all(conn: KafkaConnection, settings: QueueSettings) -> list:
    """Every committed result, read to the end: called once all offsets are committed, so nothing is still
    on its way (reading until a count is reached would stop early when duplicates make up the count)."""
    return read_topic(conn, settings.topic_names.results, idle_s=1.0, timeout_s=60)


def end_offsets(admin: AdminClient, topic: str, isolation: IsolationLevel) -> dict[int, int]:
    partitions = range(partition_count(admin, topic))
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                                 isolation_level=isolation, request_timeout=10)
    return {tp.partition: future.result().offset for tp, future in futures.items()}


@pytest.mark.chaos
@pytest.mark.parametrize("point", ["after_produce", "after_send_offsets", "after_commit"])
def test_sigkill_at_each_commit_point_then_restart_is_exactly_once(conn, provisioned, tmp_path: Path, point):
    settings = provisioned
    slot = settings.slots()[0]
    expected = enqueue_for_slot(conn, settings, seed=31)
    fault = f"{point}@{FAULT_ON_TRANSACTION}:kill"
    victim = spawn_worker(settings, slot.name, tmp_path / "victim.log", latency_ms=20, in_flight=4,
                          extra_env={**SMALL_TRANSACTIONS, "CVQ_FAULT": fault})
    try:
        assert victim.wait(120) == -signal.SIGKILL
        victim_log = (tmp_path / "victim.log").read_text(errors="replace")
        assert f"CVQ_FAULT={fault}: injecting it now" in victim_log  # the fault, not something else, killed it
    except BaseException:
        stop_all(victim)
        raise
    restarted, results = restart_and_read(conn, settings, victim, tmp_path / "restarted.log")

    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == expected, f"lost {len(expected - set(per_job))} job(s)"
    duplicated = {job: n for job, n in per_job.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} job(s) have more than one committed result, e.g. " \
                           f"{sorted(duplicated.items())[:5]}"
    by_worker = result_workers(results)
    # The kill fell mid-run: the victim committed its first transactions, the restarted worker the rest.
    assert by_worker[str(victim.pid)] > 0 and by_worker[str(restarted.pid)] > 0, by_worker
    assert started(tmp_path / "restarted.log") and restarted.returncode == 0  # SIGTERM is a clean stop


@pytest.mark.chaos
def test_fatal_producer_error_aborts_the_transaction_and_exits_4(conn, provisioned, tmp_path: Path):
    settings = provisioned
    slot = settings.slots()[0]
    expected = enqueue_for_slot(conn, settings, seed=32)
    admin = admin_client(conn)
    results_topic = settings.topic_names.results
    timeout_env = {"CVQ_WORKER__TRANSACTION_TIMEOUT_MS": str(TRANSACTION_TIMEOUT_MS)}
    fatal = spawn_worker(settings, slot.name, tmp_path / "fatal.log",
                         extra_env={**timeout_env, "CVQ_FAULT": "after_produce@1:fatal"})
    follow_up = None
    try:
        assert fatal.wait(120) == 4
        fatal_log = (tmp_path / "fatal.log").read_text(errors="replace")
        assert "injected fatal error at after_produce (the transaction was aborted)" in fatal_log
        assert f"worker for slot {slot.name} stopped on a fatal producer error" in fatal_log
        assert "Traceback" not in fatal_log

        # The fault flushed the first transaction's results to the broker before failing. Until that
        # transaction ends, the read_committed end (the last stable offset) stays below the log end; the
        # abort ends it now, where a transaction left open would hold it for TRANSACTION_TIMEOUT_MS.
        written = end_offsets(admin, results_topic, IsolationLevel.READ_UNCOMMITTED)
        assert sum(written.values()) > 0, "the failed transaction wrote nothing to the broker"

        def nothing_open() -> bool:  # the commit/abort marker is appended too: compare both ends each time
            stable = end_offsets(admin, results_topic, IsolationLevel.READ_COMMITTED)
            return stable == end_offsets(admin, results_topic, IsolationLevel.READ_UNCOMMITTED)

        wait_for(nothing_open, ABORT_VISIBLE_WITHIN_S, "the aborted transaction to stop holding the last stable offset")

        # The check above must come first: the follow-up worker's init_transactions() would itself abort a
        # transaction left open under the same transactional id, so its success alone proves no abort.
        follow_up = spawn_worker(settings, slot.name, tmp_path / "follow_up.log", extra_env=timeout_env)
        wait_for_offsets_at_end(conn, settings)
        results = read_all(conn, settings)
    finally:
        stop_all(fatal, follow_up)

    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == expected
    assert max(per_job.values()) == 1
    assert set(result_workers(results)) == {str(follow_up.pid)}  # nothing of the aborted transaction is visible
    assert follow_up.returncode == 0


@pytest.mark.chaos
def test_a_client_call_blocked_past_its_limit_exits_8_and_the_restart_is_exactly_once(conn, provisioned,
                                                                                       tmp_path: Path):
    """librdkafka can block in send_offsets_to_transaction past its timeout (a dead coordinator it keeps waiting
    for: cv_queue/kafka/client/stall.py). The fault blocks right there; the watchdog must end the process, and nothing
    is lost."""
    settings = provisioned
    slot = settings.slots()[0]
    expected = enqueue_for_slot(conn, settings, seed=33)
    fault = f"in_send_offsets@{FAULT_ON_TRANSACTION}:hang"
    stuck = spawn_worker(settings, slot.name, tmp_path / "stuck.log", latency_ms=20, in_flight=4,
                         extra_env={**SMALL_TRANSACTIONS, "CVQ_FAULT": fault, "CVQ_WORKER__CLIENT_STALL_S": "3"})
    try:
        assert stuck.wait(120) == EXIT_CLIENT_STALLED
        stuck_log = (tmp_path / "stuck.log").read_text(errors="replace")
        assert f"CVQ_FAULT={fault}: injecting it now" in stuck_log
        assert "send_offsets_to_transaction has been blocked for" in stuck_log
        assert "Thread 0x" in stuck_log  # every thread's stack, for the operator
    except BaseException:
        stop_all(stuck)
        raise
    restarted, results = restart_and_read(conn, settings, stuck, tmp_path / "restarted.log")

    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == expected
    assert max(per_job.values()) == 1
    by_worker = result_workers(results)
    assert by_worker[str(stuck.pid)] > 0 and by_worker[str(restarted.pid)] > 0, by_worker
