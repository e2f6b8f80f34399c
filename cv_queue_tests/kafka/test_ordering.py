"""A poison-pill key does not stop other keys in its partition; one key never runs concurrently or out of order."""

import itertools
import threading
import time

from confluent_kafka import Producer

from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.handler import JobContext
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.envelope import read_dead_letter
from cv_queue.messages import EvaluationJob, EvaluationResult, EvaluationScores
from cv_queue_tests.support import read_topic, running_workers, tuned


def test_poison_pill_does_not_block_other_keys_in_its_partition(conn, provisioned):
    settings = tuned(provisioned, retry={"inprocess_tries": 1, "base_delay_ms": 500, "multiplier": 2.0,
                                         "jitter": 0.0, "max_attempts": 4})
    poison = next(sample_jobs(1, seed=1, prefix="poison", labels_for={0: {"simulate": "transient:1000"}}))
    others = list(sample_jobs(60, seed=2, prefix="other", labels_for={i: {"simulate": "sleep:20"} for i in range(60)}))
    raw = Producer(conn.client_config())
    for job in [poison, *others]:  # all in partition 0, the poison first
        raw.produce(settings.topic_names.main, key=job.key, value=job.to_bytes(), partition=0)
    raw.flush(10)
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        results = read_topic(conn, settings.topic_names.results, expect=60, timeout_s=60)
        [letter_msg] = read_topic(conn, settings.topic_names.dlq, expect=1, timeout_s=60)
    letter = read_dead_letter(letter_msg.topic(), letter_msg.partition(), letter_msg.offset(), letter_msg.key(),
                              letter_msg.value(), letter_msg.headers())
    assert letter.key == poison.key and letter.category == ErrorCategory.TRANSIENT and letter.attempts == 4
    finished = [EvaluationResult.model_validate_json(m.value()) for m in results]
    assert {r.job_id for r in finished} == {j.job_id for j in others}
    # Every other job finished while the poison pill was still being retried (~3.5 s of backoff).
    assert max(r.evaluated_at for r in finished) < letter.failed_at


class RecordingHandler:
    """Notes when each call starts and ends, to check per-key exclusivity and order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float, float]] = []
        self.lock = threading.Lock()

    def __call__(self, job: EvaluationJob, ctx: JobContext) -> EvaluationScores:
        start = time.monotonic()
        time.sleep(float(job.labels["sleep_s"]))
        with self.lock:
            self.calls.append((job.job_id, ctx.offset, start, time.monotonic()))
        return EvaluationScores(cv_match_rate=0.5, project_score=5, cv_feedback="", project_feedback="",
                                overall_summary="")


def test_same_key_runs_one_at_a_time_in_offset_order(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 16})
    base = list(sample_jobs(8, seed=4, prefix="k"))
    raw = Producer(conn.client_config())
    expected = 0
    # Eight keys, each submitted four times, interleaved; early copies are slow so that a concurrent or
    # reordered run of the same key would show.
    for round_ in range(4):
        for job in base:
            copy = job.model_copy(update={"labels": {"sleep_s": str(0.15 if round_ == 0 else 0.01)}})
            raw.produce(settings.topic_names.main, key=copy.key, value=copy.to_bytes(), partition=3)
            expected += 1
    raw.flush(10)
    handler = RecordingHandler()
    with running_workers(conn, settings, handler=handler):
        read_topic(conn, settings.topic_names.results, expect=expected, timeout_s=60)
    assert len(handler.calls) == expected
    by_key: dict[str, list[tuple[int, float, float]]] = {}
    for job_id, offset, start, end in handler.calls:
        by_key.setdefault(job_id, []).append((offset, start, end))
    overlapping_keys = 0
    for runs in by_key.values():
        runs.sort(key=lambda r: r[1])
        assert [r[0] for r in runs] == sorted(r[0] for r in runs)  # started in offset order
        assert all(prev[2] <= nxt[1] for prev, nxt in itertools.pairwise(runs))  # never overlapping
    # ...while different keys did run concurrently (the check above is not passing by accident).
    firsts = sorted((runs[0][1], runs[0][2]) for runs in by_key.values())
    overlapping_keys = sum(1 for a, b in itertools.pairwise(firsts) if b[0] < a[1])
    assert overlapping_keys > 0


def test_partition_ordering_runs_one_job_per_partition_at_a_time(conn, provisioned):
    # The seed's design as written: one job at a time per partition, whatever the keys.
    settings = tuned(provisioned, worker={"max_in_flight": 16, "ordering": "partition"})
    jobs = [j.model_copy(update={"labels": {"sleep_s": "0.03"}}) for j in sample_jobs(12, seed=9, prefix="p")]
    raw = Producer(conn.client_config())
    for job in jobs:
        raw.produce(settings.topic_names.main, key=job.key, value=job.to_bytes(), partition=5)
    raw.flush(10)
    handler = RecordingHandler()
    with running_workers(conn, settings, handler=handler):
        read_topic(conn, settings.topic_names.results, expect=len(jobs), timeout_s=60)
    runs = sorted((start, end, offset) for _, offset, start, end in handler.calls)
    assert len(runs) == len(jobs)
    assert [r[2] for r in runs] == sorted(r[2] for r in runs)  # in offset order
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs))  # never two at once in the partition
