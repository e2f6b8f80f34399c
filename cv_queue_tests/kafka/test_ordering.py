"""A poison-pill key does not stop other keys in its partition; one key never runs concurrently or out of order."""

import itertools
import json
import time
from dataclasses import dataclass

from confluent_kafka import Message, Producer

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.handler import JobContext
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue.messages import EvaluationJob, EvaluationResult, EvaluationScores
from cv_queue.settings import QueueSettings
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
    assert letter.original_partition == 0 and h.read_int(letter_msg.headers(), h.HANDLER_CALLS, 0) == 4
    finished = [EvaluationResult.model_validate_json(m.value()) for m in results]
    assert sorted(r.job_id for r in finished) == sorted(j.job_id for j in others)  # each once
    assert all((r.attempts, r.handler_calls, r.replays) == (1, 1, 0) for r in finished)
    assert {r.worker.rsplit(":", 1)[-1] for r in finished} == {_slot_of(settings, 0)}
    # Every other job finished while the poison pill was still being retried (~3.5 s of backoff).
    assert max(r.evaluated_at for r in finished) < letter.failed_at


class TimingHandler:
    """Sleeps as the job's `sleep_s` label says and writes when it ran, and on which record, into the result.

    The assertions below then read everything from the results topic: what the worker committed is what
    is judged, not what the handler saw or a counter kept beside it.
    """

    def __call__(self, job: EvaluationJob, ctx: JobContext) -> EvaluationScores:
        start = time.time()
        time.sleep(float(job.labels["sleep_s"]))
        ran = {"start": start, "end": time.time(), "partition": ctx.partition, "offset": ctx.offset}
        return EvaluationScores(cv_match_rate=0.5, project_score=5, cv_feedback=json.dumps(ran),
                                project_feedback="", overall_summary="")


@dataclass(frozen=True)
class TimedResult:
    job_id: str
    request_id: str
    attempts: int
    handler_calls: int
    replays: int
    worker: str
    partition: int
    offset: int
    start: float
    end: float


def _timed_results(messages: list[Message]) -> list[TimedResult]:
    """The results as read (in topic order within each results partition), with the handler's timings."""
    out = []
    for msg in messages:
        result = EvaluationResult.model_validate_json(msg.value())
        assert msg.key() == result.job_id.encode()
        ran = json.loads(result.scores.cv_feedback)
        out.append(TimedResult(result.job_id, result.request_id, result.attempts, result.handler_calls,
                               result.replays, result.worker, ran["partition"], ran["offset"], ran["start"],
                               ran["end"]))
    return out


def _slot_of(settings: QueueSettings, partition: int) -> str:
    return next(s.name for s in settings.slots() if partition in s.partitions)


def test_same_key_runs_one_at_a_time_in_offset_order(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 16})
    base = list(sample_jobs(8, seed=4, prefix="k"))
    raw = Producer(conn.client_config())
    submitted: list[tuple[str, str]] = []
    # Eight keys, each submitted four times, interleaved; early copies are slow so that a concurrent or
    # reordered run of the same key would show. Each copy has its own request_id, so its result says
    # which copy it is.
    for round_ in range(4):
        for job in base:
            copy = job.model_copy(update={"request_id": f"{job.request_id}-copy{round_}",
                                          "labels": {"sleep_s": str(0.15 if round_ == 0 else 0.01)}})
            raw.produce(settings.topic_names.main, key=copy.key, value=copy.to_bytes(), partition=3)
            submitted.append((copy.job_id, copy.request_id))
    raw.flush(10)
    with running_workers(conn, settings, handler=TimingHandler()):
        read = read_topic(conn, settings.topic_names.results, expect=len(submitted), timeout_s=60)
    results = _timed_results(read)
    assert sorted((r.job_id, r.request_id) for r in results) == sorted(submitted)  # each copy once
    assert all((r.attempts, r.handler_calls, r.replays) == (1, 1, 0) for r in results)
    assert {r.partition for r in results} == {3}
    assert {r.worker.rsplit(":", 1)[-1] for r in results} == {_slot_of(settings, 3)}
    by_key: dict[str, list[TimedResult]] = {}
    for r in results:
        by_key.setdefault(r.job_id, []).append(r)
    for job_id, runs in by_key.items():
        # One key's results share a results partition, so the order read is the order committed.
        assert [r.request_id for r in runs] == [rid for jid, rid in submitted if jid == job_id]
        assert [r.offset for r in runs] == sorted(r.offset for r in runs)
        assert all(prev.end <= nxt.start for prev, nxt in itertools.pairwise(runs))  # never overlapping
    # ...while different keys did run concurrently (the checks above are not passing by accident).
    firsts = sorted((runs[0].start, runs[0].end) for runs in by_key.values())
    assert any(b[0] < a[1] for a, b in itertools.pairwise(firsts))


def test_partition_ordering_runs_one_job_per_partition_at_a_time(conn, provisioned):
    # The seed's design as written: one job at a time per partition, whatever the keys.
    settings = tuned(provisioned, worker={"max_in_flight": 16, "ordering": "partition"})
    jobs = [j.model_copy(update={"labels": {"sleep_s": "0.03"}}) for j in sample_jobs(12, seed=9, prefix="p")]
    raw = Producer(conn.client_config())
    for job in jobs:
        raw.produce(settings.topic_names.main, key=job.key, value=job.to_bytes(), partition=5)
    raw.flush(10)
    with running_workers(conn, settings, handler=TimingHandler()):
        read = read_topic(conn, settings.topic_names.results, expect=len(jobs), timeout_s=60)
    results = sorted(_timed_results(read), key=lambda r: r.start)
    assert sorted(r.job_id for r in results) == sorted(j.job_id for j in jobs)  # each job once
    assert all((r.attempts, r.handler_calls, r.replays) == (1, 1, 0) for r in results)
    assert {r.partition for r in results} == {5}
    assert {r.worker.rsplit(":", 1)[-1] for r in results} == {_slot_of(settings, 5)}
    assert [r.job_id for r in results] == [j.job_id for j in jobs]  # started in the order produced
    assert all(a.end <= b.start for a, b in itertools.pairwise(results))  # never two at once in the partition
