"""Async jobs that ignore their cancellation, in real `cv-queue worker` processes against the real broker.

The handler (stubborn.py) swallows the job timeout's cancel in the ways real handlers do: a bare `except`, a shield,
a `finally` that awaits, an answer long after the cancel, and a cv_ref read hung on a "dead mount" (a FIFO). Each such
job must be settled as timed out (one dead letter: retries are off), its key's later jobs must still get results,
the worker must count what it abandoned, and past `max_abandoned_handlers` exit 5 with everything finished committed.
A job whose library cancels its own task and converts that into a transient error fails as that error, at once,
and its key flows on too. Outputs are read read_committed and counted by job.
"""

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

from confluent_kafka import Message

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import group_lag
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue.kafka.worker.execution import JOB_TIMEOUT_CLASS
from cv_queue.messages import EvaluationJob, EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.kafka.procs import spawn_worker, stop_all
from cv_queue_tests.kafka.stubborn import hung_file, release
from cv_queue_tests.metrics.scrape import metrics_url, scrape
from cv_queue_tests.support import read_topic, unique, wait_for

TIMEOUT_S, GRACE_S, LATE_S = 2, 1, 3  # the "late" job answers LATE_S after its cancel: past the grace
ENV = {
    "CVQ_TOPICS__PARTITIONS": "2",  # one slot, 0-1: one worker process serves every job
    "CVQ_WORKER__HANDLER": "cv_queue_tests.kafka.stubborn:StubbornHandler",
    "CVQ_WORKER__HANDLER_OPTIONS": json.dumps({"latency_ms": 20, "late_s": LATE_S, "file_read_threads": 2}),
    "CVQ_WORKER__MAX_IN_FLIGHT": "16",
    "CVQ_WORKER__JOB_TIMEOUT_S": str(TIMEOUT_S),
    "CVQ_WORKER__CANCEL_GRACE_S": str(GRACE_S),
    "CVQ_RETRY__MAX_ATTEMPTS": "1",  # a timed-out job is dead-lettered at once: exactly one letter each
}


def _provisioned(conn: KafkaConnection) -> QueueSettings:
    settings = QueueSettings(namespace=unique("ab"), topics={"partitions": 2, "partitions_per_worker": 2})
    provision(admin_client(conn), topic_specs(settings))
    return settings


def _stubborn(mode: str, seed: int, fifo: Path) -> EvaluationJob:
    job = next(iter(sample_jobs(1, seed=seed, prefix=f"stuck-{mode}")))
    update: dict = {"labels": {"stubborn": mode}, "request_id": f"stuck-{mode}"}
    if mode == "read":
        update |= {"cv_text": None, "cv_ref": f"file://{fifo}"}
    return job.model_copy(update=update)


def _followers(stuck: EvaluationJob, count: int) -> list[EvaluationJob]:
    """Jobs with the stuck job's id, so its key: they can only run once its lane is freed."""
    return [stuck.model_copy(update={"labels": {}, "request_id": f"{stuck.request_id}-then-{i}",
                                     "cv_text": stuck.cv_text or "python kafka", "cv_ref": None})
            for i in range(count)]


def _letters(messages: list[Message]) -> dict[str, str]:
    """request id -> error class, of every dead letter (failing on a job with two)."""
    out: dict[str, str] = {}
    for m in messages:
        letter = read_dead_letter(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers())
        request_id = EvaluationJob.model_validate_json(letter.value or b"").request_id
        assert request_id not in out, f"job {request_id} was dead-lettered twice"
        out[request_id] = letter.error_class
    return out


def _all_committed(conn: KafkaConnection, settings: QueueSettings) -> bool:
    lag = group_lag(admin_client(conn), settings.group_id, settings.topic_names.main)
    return all((x.committed or 0) == x.end_offset for x in lag)


def test_async_jobs_that_ignore_their_cancel_are_settled_and_their_keys_flow_on(conn, tmp_path):
    settings = _provisioned(conn)
    fifo = hung_file(tmp_path, "cv-on-a-dead-mount.txt")
    modes = ("swallow", "shield", "finally", "late", "read")
    stuck = [_stubborn(mode, seed, fifo) for seed, mode in enumerate(modes)]
    self_cancelled = _stubborn("selfcancel", len(modes), fifo)  # fails at once, as ConnectionError: no timeout
    followers = {job.request_id: _followers(job, 3) for job in [*stuck, self_cancelled]}
    ordinary = list(sample_jobs(40, seed=77, prefix="ordinary"))
    producer = JobProducer(conn, settings.topic_names.main)
    for job in [*stuck, self_cancelled]:
        producer.enqueue_batch([job, *followers[job.request_id]])
    producer.enqueue_batch(ordinary)
    log = tmp_path / "worker.log"
    proc = spawn_worker(settings, "0-1", log, extra_env=ENV, extra_args=["--metrics-port", "0"])
    try:
        expected = sum(len(f) for f in followers.values()) + len(ordinary)
        read_topic(conn, settings.topic_names.results, expect=expected, timeout_s=90)
        wait_for(lambda: len(read_topic(conn, settings.topic_names.dlq, idle_s=0.3)) >= len(stuck) + 1, 30,
                 "a dead letter for each stuck job and the self-cancelled one")
        url = metrics_url(log)
        assert url is not None
        # swallow, shield and finally still run, abandoned; "late" ended after it was abandoned; the hung read's
        # job ended at its timeout, but its thread is still stuck in the read.
        wait_for(lambda: scrape(url).value("cvq_abandoned_handler_threads") == 4, 30,
                 "3 abandoned tasks and 1 stuck read thread in the gauge")
        now = scrape(url)
        assert now.value("cvq_jobs_timed_out_total") == len(stuck)
        assert now.value("cvq_jobs_in_flight") == 0, "an abandoned job still holds a place in flight"
        wait_for(lambda: _all_committed(conn, settings), 30, "every source offset committed")
        late = next(j for j in stuck if j.request_id == "stuck-late")
        assert f"job {late.job_id} ended after it was abandoned; its late outcome is dropped" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, f"the worker did not stop cleanly beside its abandoned tasks; see {log}"
    finally:
        release(fifo)
        stop_all(proc)
    results = [EvaluationResult.model_validate_json(m.value())
               for m in read_topic(conn, settings.topic_names.results, idle_s=1.0)]
    per_request = Counter(r.request_id for r in results)
    assert max(per_request.values()) == 1, "a job got two results"
    assert set(per_request) == {j.request_id for f in followers.values() for j in f} | {j.request_id for j in ordinary}
    for job in [*stuck, self_cancelled]:  # the key's later jobs ran, in offset order, after it let go of the key
        order = [r.request_id for r in results if r.job_id == job.job_id]
        assert order == [f.request_id for f in followers[job.request_id]]
    letters = _letters(read_topic(conn, settings.topic_names.dlq, idle_s=1.0))
    assert letters == {j.request_id: JOB_TIMEOUT_CLASS for j in stuck} | {
        self_cancelled.request_id: "builtins.ConnectionError"}


def test_past_max_abandoned_handlers_an_async_worker_exits_5_with_finished_work_committed_once(conn, tmp_path):
    settings = _provisioned(conn)
    fifo = hung_file(tmp_path, "cv-on-a-dead-mount.txt")
    # Two tasks that never let go and one thread stuck in a read: 3 abandoned, over the limit of 2.
    stuck = [_stubborn(mode, seed, fifo) for seed, mode in enumerate(("swallow", "shield", "read"))]
    ordinary = list(sample_jobs(100, seed=78, prefix="ordinary"))
    producer = JobProducer(conn, settings.topic_names.main)
    producer.enqueue_batch(stuck)  # first in their partitions: what runs after them is committed through the map
    producer.enqueue_batch(ordinary)
    log = tmp_path / "worker.log"
    proc = spawn_worker(settings, "0-1", log, extra_env={**ENV, "CVQ_WORKER__MAX_ABANDONED_HANDLERS": "2"})
    try:
        code = proc.wait(90)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        release(fifo)
        stop_all(proc)
    text = log.read_text(errors="replace")
    assert code == 5, f"the worker exited {code}, not 5; see {log}"
    assert "max_abandoned_handlers=2" in text and "2 async job task(s)" in text and "1 handler thread(s)" in text
    results = read_topic(conn, settings.topic_names.results, idle_s=1.0)
    per_job = Counter(m.key().decode() for m in results)
    assert per_job == Counter({j.job_id: 1 for j in ordinary}), "finished jobs not committed exactly once"
    letters = _letters(read_topic(conn, settings.topic_names.dlq, idle_s=1.0))
    assert letters == {j.request_id: JOB_TIMEOUT_CLASS for j in stuck}, "a stuck job was not settled before exit"
    # Every job was settled before the exit, so every offset is committed: a restart runs nothing again.
    wait_for(lambda: _all_committed(conn, settings), 30, "every source offset committed")
