"""The handler pool and job runner alone: deadlines, BaseExceptions, output repairs, a pool that gives up clearly."""

import asyncio
import json
import threading
import time

import pytest

from cv_queue.errors import ErrorCategory, MalformedOutputError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.wire.delivery import parse_delivery
from cv_queue.kafka.wire.records import SourceRecord
from cv_queue.kafka.worker.async_pool import AsyncHandlerPool
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.kafka.worker.execution import (
    JOB_TIMEOUT_CLASS,
    AsyncJobRunner,
    Completion,
    JobRunner,
    Task,
    is_async_handler,
)
from cv_queue.kafka.worker.pool import HandlerPool
from cv_queue.messages import EvaluationScores
from cv_queue.settings import RetrySettings

SCORES = EvaluationScores(cv_match_rate=0.5, project_score=5, cv_feedback="f", project_feedback="f",
                          overall_summary="s")
RETRY = RetrySettings(inprocess_tries=1, output_repairs=2)


def _task(index: int, partition: int = 0) -> Task:
    job = next(iter(sample_jobs(1, seed=index, prefix=f"p{index}")))
    source = SourceRecord("jobs", partition, index, 0, job.key, job.to_bytes(), [])
    return Task(delivery=parse_delivery(source, from_retry=False), job=job, lane=job.key)


def _collect(pool: HandlerPool, count: int, timeout_s: float = 10) -> list[Completion]:
    out: list[Completion] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        out.extend(pool.expire())
        completion = pool.wait_completed(0.05)
        if completion is not None:
            out.append(completion)
    assert len(out) == count, f"{len(out)} of {count} completions within {timeout_s}s"
    return out


def _pool(handler: object, size: int = 2, timeout_s: float = 60, max_abandoned: int = 8) -> HandlerPool:
    pool = HandlerPool(lambda: JobRunner(handler, RETRY, ErrorClassifier(), "w"), size=size,  # type: ignore[arg-type]
                       job_timeout_s=timeout_s, max_abandoned=max_abandoned, thread_prefix="cvq-handler-test")
    pool.start()
    return pool


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit])
def test_a_base_exception_fails_the_job_and_the_thread_serves_on(exc_type: type[BaseException]) -> None:
    def handler(job: object, ctx: object) -> EvaluationScores:
        if str(job.job_id).startswith("p0"):  # type: ignore[attr-defined]
            raise exc_type("from a library")
        return SCORES

    pool = _pool(handler, size=1)  # one thread: if it died, nothing after the first job would run
    try:
        pool.offer([_task(i) for i in range(5)])
        done = {c.task.job.job_id[:2]: c for c in _collect(pool, 5)}
        failed = done["p0"].failure
        assert failed is not None and failed.error_class.endswith(exc_type.__qualname__)
        assert failed.category == ErrorCategory.TRANSIENT
        assert all(done[f"p{i}"].result is not None for i in range(1, 5))
        assert pool.broken is None and all(t.is_alive() for t in pool.threads)
    finally:
        pool.close()


def test_a_hung_job_times_out_its_lane_is_freed_and_its_thread_replaced() -> None:
    release = threading.Event()

    def handler(job: object, ctx: object) -> EvaluationScores:
        if str(job.job_id).startswith("p0"):  # type: ignore[attr-defined]
            release.wait(30)
        return SCORES

    pool = _pool(handler, size=2, timeout_s=0.5)
    try:
        hung = _task(0)
        same_key = Task(delivery=_task(1).delivery, job=_task(1).job, lane=hung.lane)  # queued behind the hung one
        pool.offer([hung, same_key, *(_task(i) for i in range(2, 8))])
        done = _collect(pool, 8)
        timed_out = [c for c in done if c.failure is not None]
        assert [c.task for c in timed_out] == [hung]
        assert timed_out[0].failure.error_class == JOB_TIMEOUT_CLASS  # type: ignore[union-attr]
        assert timed_out[0].failure.category == ErrorCategory.TRANSIENT  # type: ignore[union-attr]
        assert pool.timed_out == 1 and pool.abandoned == 1
        assert len([t for t in pool.threads if t.is_alive()]) == 2, "the abandoned thread was replaced"
        release.set()  # the late answer must be dropped, not delivered as a second completion
        time.sleep(0.3)
        assert pool.completed() == []
        assert pool.in_flight == 0
    finally:
        release.set()
        pool.close()


def test_too_many_abandoned_threads_break_the_pool_with_a_reason() -> None:
    release = threading.Event()

    def handler(job: object, ctx: object) -> EvaluationScores:
        release.wait(30)
        return SCORES

    pool = _pool(handler, size=2, timeout_s=0.2, max_abandoned=2)
    try:
        pool.offer([_task(i) for i in range(4)])
        deadline = time.monotonic() + 10
        while pool.broken is None and time.monotonic() < deadline:
            pool.expire()
            time.sleep(0.05)
        assert pool.broken is not None and "max_abandoned_handlers=2" in pool.broken
    finally:
        release.set()
        pool.close()


def test_malformed_output_is_repaired_then_permanent_never_invalid_payload() -> None:
    calls: dict[str, int] = {}

    def handler(job: object, ctx: object) -> EvaluationScores:
        key = str(job.job_id)[:2]  # type: ignore[attr-defined]
        calls[key] = calls.get(key, 0) + 1
        if key == "p0" and calls[key] == 1:
            json.loads("{cut off")
        if key == "p1":
            EvaluationScores.model_validate({"cv_match_rate": 9})
        if key == "p2":
            raise MalformedOutputError("score out of range")
        return SCORES

    runner = JobRunner(handler, RETRY, ErrorClassifier(), "w")
    repaired = runner(_task(0))
    assert repaired.result is not None and repaired.calls == 2
    for index in (1, 2):
        failed = runner(_task(index))
        assert failed.failure is not None and failed.calls == 1 + RETRY.output_repairs
        assert failed.failure.category == ErrorCategory.PERMANENT
        assert "repair call" in failed.failure.message


# --- the async pool: the same contract on one event loop ---------------------------------------------------------


def _async_pool(handler: object, size: int = 4, timeout_s: float = 60) -> AsyncHandlerPool:
    pool = AsyncHandlerPool(AsyncJobRunner(handler, RETRY, ErrorClassifier(), "w"), size=size,  # type: ignore[arg-type]
                            job_timeout_s=timeout_s, thread_prefix="cvq-handler-async-test")
    pool.start()
    return pool


def test_async_handlers_are_detected() -> None:
    async def fn(job: object, ctx: object) -> EvaluationScores:
        return SCORES

    class Handler:
        async def __call__(self, job: object, ctx: object) -> EvaluationScores:
            return SCORES

    assert is_async_handler(fn) and is_async_handler(Handler())
    assert not is_async_handler(lambda job, ctx: SCORES)


def test_many_async_jobs_run_at_once_one_per_key_in_order() -> None:
    running: dict[bytes, int] = {}
    peak = {"all": 0, "now": 0}
    order: list[str] = []

    async def handler(job: object, ctx: object) -> EvaluationScores:
        key = job.key  # type: ignore[attr-defined]
        running[key] = running.get(key, 0) + 1
        assert running[key] == 1, "two jobs of one key at once"
        peak["now"] += 1
        peak["all"] = max(peak["all"], peak["now"])
        order.append(job.job_id)  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        peak["now"] -= 1
        running[key] -= 1
        return SCORES

    pool = _async_pool(handler, size=100)
    try:
        tasks = [_task(i) for i in range(200)]
        shared = [Task(delivery=_task(500 + i).delivery, job=_task(500 + i).job, lane=b"one-key") for i in range(5)]
        pool.offer([*tasks, *shared])
        done = _collect(pool, 205, timeout_s=30)
        assert all(c.result is not None for c in done)
        assert peak["all"] == 100, "the pool runs exactly `size` jobs at once"
        assert [o for o in order if o in {t.job.job_id for t in shared}] == [t.job.job_id for t in shared]
    finally:
        pool.close()


def test_an_async_job_past_its_timeout_is_cancelled_and_fails_as_timeout() -> None:
    cancelled = threading.Event()

    async def handler(job: object, ctx: object) -> EvaluationScores:
        if str(job.job_id).startswith("p0"):  # type: ignore[attr-defined]
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return SCORES

    pool = _async_pool(handler, timeout_s=0.5)
    try:
        pool.offer([_task(i) for i in range(3)])
        done = {c.task.job.job_id[:2]: c for c in _collect(pool, 3)}
        assert done["p0"].failure is not None and done["p0"].failure.error_class == JOB_TIMEOUT_CLASS
        assert cancelled.is_set() and pool.timed_out == 1 and pool.in_flight == 0
    finally:
        pool.close()


def test_a_cancelled_error_raised_by_the_handler_itself_is_a_failure_not_a_stop() -> None:
    async def handler(job: object, ctx: object) -> EvaluationScores:
        if str(job.job_id).startswith("p0"):  # type: ignore[attr-defined]
            raise asyncio.CancelledError("a library cancelled its own request")
        return SCORES

    pool = _async_pool(handler)
    try:
        pool.offer([_task(i) for i in range(3)])
        done = {c.task.job.job_id[:2]: c for c in _collect(pool, 3)}
        assert done["p0"].failure is not None and done["p0"].failure.error_class.endswith("CancelledError")
        assert done["p1"].result is not None and pool.broken is None
    finally:
        pool.close()


def test_a_handler_blocking_the_loop_breaks_the_pool_with_a_reason() -> None:
    async def handler(job: object, ctx: object) -> EvaluationScores:
        time.sleep(3)  # a synchronous call inside async def: every other job stalls with it
        return SCORES

    pool = _async_pool(handler, timeout_s=1)
    try:
        pool.offer([_task(0)])
        time.sleep(2.5)
        pool.expire()
        assert pool.broken is not None and "blocking" in pool.broken
    finally:
        pool.close()
