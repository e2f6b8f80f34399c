"""The async pool alone, against handlers that ignore their job's cancellation: the job is settled as timed out, its
task abandoned and counted, its key's lane freed, a late end ignored, and too many abandoned make the pool broken.
And whatever a handler does (returns, raises, cancels its own task, swallows or shields the pool's cancel, answers
late), its job is settled exactly once and its key freed; on close, a job still running is left unsettled."""

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cv_queue.errors import ErrorCategory, TransientJobError
from cv_queue.evaluation.files import FileReads
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.wire.delivery import parse_delivery
from cv_queue.kafka.wire.records import SourceRecord
from cv_queue.kafka.worker.async_pool import AsyncHandlerPool
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.kafka.worker.execution import JOB_TIMEOUT_CLASS, AsyncJobRunner, Completion, Task
from cv_queue.messages import EvaluationJob, EvaluationScores
from cv_queue.settings import RetrySettings
from cv_queue_tests.kafka.stubborn import hung_file, release

SCORES = EvaluationScores(cv_match_rate=0.5, project_score=5, cv_feedback="f", project_feedback="f",
                          overall_summary="s")
RETRY = RetrySettings(inprocess_tries=1, output_repairs=0)


def _task(index: int, lane: bytes | None = None) -> Task:
    job = next(iter(sample_jobs(1, seed=index, prefix=f"p{index}")))
    source = SourceRecord("jobs", 0, index, 0, job.key, job.to_bytes(), [])
    return Task(delivery=parse_delivery(source, from_retry=False), job=job, lane=lane or job.key)


def _pool(handler: object, timeout_s: float = 0.3, grace_s: float = 0.2, max_abandoned: int = 8,
          retry: RetrySettings = RETRY, stuck_threads: object = None) -> AsyncHandlerPool:
    pool = AsyncHandlerPool(AsyncJobRunner(handler, retry, ErrorClassifier(), "w"), size=4,  # type: ignore[arg-type]
                            job_timeout_s=timeout_s, thread_prefix="cvq-handler-abandon-test",
                            max_abandoned=max_abandoned, cancel_grace_s=grace_s,
                            stuck_threads=stuck_threads)  # type: ignore[arg-type]
    pool.start()
    return pool


def _collect(pool: AsyncHandlerPool, count: int, timeout_s: float = 10) -> list[Completion]:
    out: list[Completion] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        pool.expire()
        completion = pool.wait_completed(0.05)
        if completion is not None:
            out.append(completion)
    assert len(out) == count, f"{len(out)} of {count} completions within {timeout_s}s"
    return out


def _eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _prefix(completion: Completion) -> str:
    return completion.task.job.job_id.split("-")[0]


def test_a_job_that_swallows_its_cancel_is_settled_abandoned_and_its_key_flows_on() -> None:
    spans: dict[str, list[float]] = {}
    p0_ended = asyncio.Event()  # bound to the pool's loop on first use

    async def handler(job: object, ctx: object) -> EvaluationScores:
        name = str(job.job_id).split("-")[0]  # type: ignore[attr-defined]
        spans[name] = [time.monotonic()]
        if name == "p0":
            try:
                await asyncio.sleep(3600)
            except BaseException:  # swallowed: answers 0.6 s after its cancel, 0.4 s after it was abandoned
                await asyncio.sleep(0.6)
            p0_ended.set()
        elif name == "p1":
            await p0_ended.wait()  # p1 (p0's key's next job) still runs when p0's late answer comes
            await asyncio.sleep(0.1)
        spans[name].append(time.monotonic())
        return SCORES

    pool = _pool(handler, timeout_s=1.0, grace_s=0.2)
    try:
        stuck = _task(0)
        pool.offer([stuck, _task(1, lane=stuck.lane), _task(2, lane=stuck.lane)])
        first = _collect(pool, 1)[0]
        assert _prefix(first) == "p0" and first.failure is not None
        assert first.failure.error_class == JOB_TIMEOUT_CLASS and first.failure.category == ErrorCategory.TRANSIENT
        assert first.result is None
        _eventually(lambda: pool.abandoned == 1, "the task counted as abandoned")  # just after its completion
        assert pool.timed_out == 1 and pool.broken is None
        rest = _collect(pool, 2, timeout_s=5)
        assert [_prefix(c) for c in rest] == ["p1", "p2"] and all(c.result is not None for c in rest)
        assert spans["p0"][1] < spans["p1"][1], "p0's late end was meant to come while p1 still ran"
        # p0's late end must not have freed its key's lane a second time: p2 waited for p1.
        assert spans["p2"][0] >= spans["p1"][1]
        time.sleep(0.3)
        assert pool.completed() == [], "the abandoned job's late answer came out as a second completion"
        assert pool.abandoned == 0, "an abandoned task that ended is no longer counted"
        assert pool.in_flight == 0 and pool.buffered == 0
    finally:
        pool.close()


def test_a_cancel_swallowed_then_answered_within_the_grace_is_still_a_timeout() -> None:
    async def handler(job: object, ctx: object) -> EvaluationScores:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)
        return SCORES  # an answer after the deadline: dropped, as a thread's late answer is

    pool = _pool(handler, grace_s=2.0)
    try:
        pool.offer([_task(0)])
        done = _collect(pool, 1)[0]
        assert done.result is None and done.failure is not None and done.failure.error_class == JOB_TIMEOUT_CLASS
        assert pool.abandoned == 0 and pool.in_flight == 0
    finally:
        pool.close()


def test_no_handler_call_is_made_after_the_deadline() -> None:
    calls: list[str] = []

    async def handler(job: object, ctx: object) -> EvaluationScores:
        calls.append(str(job.job_id))  # type: ignore[attr-defined]
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise TransientJobError("upstream closed the stream") from None  # a blip, which tenacity would retry
        return SCORES

    retry = RetrySettings(inprocess_tries=3, inprocess_initial_ms=0, inprocess_max_ms=0, output_repairs=0)
    pool = _pool(handler, grace_s=2.0, retry=retry)
    try:
        pool.offer([_task(0)])
        done = _collect(pool, 1)[0]
        assert done.failure is not None and done.failure.error_class == JOB_TIMEOUT_CLASS
        time.sleep(0.2)
        assert len(calls) == 1, "the handler was called again after its job timed out"
    finally:
        pool.close()


def test_too_many_abandoned_tasks_break_the_pool_after_their_jobs_are_settled() -> None:
    async def handler(job: object, ctx: object) -> EvaluationScores:
        if str(job.job_id).startswith("p0") or str(job.job_id).startswith("p1"):  # type: ignore[attr-defined]
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:  # `except: continue`, the defect under test (GeneratorExit spared)
                    continue
        return SCORES

    pool = _pool(handler, max_abandoned=1)
    try:
        pool.offer([_task(i) for i in range(5)])
        deadline = time.monotonic() + 10
        while pool.broken is None and time.monotonic() < deadline:
            pool.expire()
            time.sleep(0.05)
        assert pool.broken is not None and "max_abandoned_handlers=1" in pool.broken
        assert "2 async job task(s)" in pool.broken
        # Every completion the verdict counted is already queued: the worker's drain after it commits them.
        done = {_prefix(c): c for c in pool.completed()}
        assert set(done) == {"p0", "p1", "p2", "p3", "p4"}
        assert done["p0"].failure is not None and done["p1"].failure is not None
        assert all(done[f"p{i}"].result is not None for i in range(2, 5))
    finally:
        pool.close()


def test_a_handlers_stuck_threads_count_as_abandoned() -> None:
    stuck = [0]

    async def handler(job: object, ctx: object) -> EvaluationScores:
        return SCORES

    pool = _pool(handler, max_abandoned=2, stuck_threads=lambda: stuck[0])
    try:
        stuck[0] = 2
        pool.expire()
        assert pool.abandoned == 2 and pool.broken is None
        stuck[0] = 3
        pool.expire()
        assert pool.broken is not None and "3 handler thread(s)" in pool.broken
    finally:
        pool.close()


# --- exactly one outcome per job, whatever its handler does ----------------------------------------------------------

TIMEOUT_S, GRACE_S, LATE_S = 0.5, 0.3, 0.6  # LATE_S after the cancel: past the grace
RETRY3 = RetrySettings(inprocess_tries=3, inprocess_initial_ms=0, inprocess_max_ms=0, output_repairs=0)


class _Behaving:
    """An async handler whose jobs each behave as `behaviours[job_id]` says (default: "returns"). `release` ends
    every task that still holds on, so a test can check that their late ends produce nothing."""

    def __init__(self) -> None:
        self.behaviours: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.started: set[str] = set()
        self.release = threading.Event()

    async def _hold(self) -> None:
        while not self.release.is_set():
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:  # the defect: every cancel swallowed
                continue

    async def __call__(self, job: EvaluationJob, ctx: object) -> EvaluationScores:
        self.calls[job.job_id] += 1
        self.started.add(job.job_id)
        behaviour = self.behaviours.get(job.job_id, "returns")
        current = asyncio.current_task()
        assert current is not None
        match behaviour:
            case "returns":
                await asyncio.sleep(0)
            case "raises":
                raise RuntimeError("the handler failed")
            case "raises_keyboard_interrupt":
                raise KeyboardInterrupt("from a library")
            case "raises_system_exit":
                raise SystemExit(3)
            case "self_cancels_and_converts":  # the reviewer's library: cancels its own task, never uncancel()s
                current.cancel()
                try:
                    await asyncio.sleep(1)
                except asyncio.CancelledError:
                    raise ConnectionError("upstream timed out") from None  # a blip: tenacity retries it
            case "self_cancels_and_raises":
                current.cancel()
                await asyncio.sleep(1)  # the CancelledError goes out as it came
            case "self_cancels_and_returns":  # the cancel is still pending when the handler returns
                current.cancel()
            case "self_cancels_and_fails_at_once":  # ... or when it fails: it lands in tenacity's wait
                current.cancel()
                raise ConnectionError("refused")
            case "self_cancels_then_hangs":
                current.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(1)
                await asyncio.sleep(3600)  # the deadline's cancel ends it
            case "hangs":
                await asyncio.sleep(3600)
            case "swallows":
                await self._hold()
            case "swallows_then_fails":
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    raise ConnectionError("stream closed") from None
            case "shields":
                work = asyncio.ensure_future(asyncio.sleep(LATE_S + TIMEOUT_S))
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    await work  # "let the write finish": past the grace
            case "finally_awaits":
                try:
                    await asyncio.sleep(3600)
                finally:
                    await asyncio.sleep(GRACE_S / 4)  # within the grace: then the cancel goes on out
            case "late_return":
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    await asyncio.sleep(LATE_S)
            case "late_return_within_grace":
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    await asyncio.sleep(GRACE_S / 4)
            case _:
                raise AssertionError(behaviour)
        return SCORES


# What each behaviour's job must end as: a result, the pool's timeout, or a failure of the handler's (its class).
OUTCOMES: dict[str, str] = {
    "returns": "result",
    "raises": "RuntimeError",
    "raises_keyboard_interrupt": "KeyboardInterrupt",
    "raises_system_exit": "SystemExit",
    "self_cancels_and_converts": "ConnectionError",
    "self_cancels_and_raises": "CancelledError",
    "self_cancels_and_returns": "result",
    "self_cancels_and_fails_at_once": "failure",  # ConnectionError or the CancelledError that cut its retry short
    "self_cancels_then_hangs": "timeout",
    "hangs": "timeout",
    "swallows": "timeout",
    "swallows_then_fails": "timeout",
    "shields": "timeout",
    "finally_awaits": "timeout",
    "late_return": "timeout",
    "late_return_within_grace": "timeout",
}


def _behaving_pool(handler: _Behaving, size: int = 4) -> AsyncHandlerPool:
    pool = AsyncHandlerPool(AsyncJobRunner(handler, RETRY3, ErrorClassifier(), "w"), size=size,  # type: ignore[arg-type]
                            job_timeout_s=TIMEOUT_S, thread_prefix="cvq-handler-outcome-test",
                            max_abandoned=64, cancel_grace_s=GRACE_S)
    pool.start()
    return pool


def _assert_outcome(completion: Completion, expected: str) -> None:
    failure = completion.failure
    if expected == "result":
        assert completion.result is not None and failure is None, failure
        return
    assert completion.result is None and failure is not None
    if expected == "timeout":
        assert failure.error_class == JOB_TIMEOUT_CLASS, failure
    else:
        assert failure.error_class != JOB_TIMEOUT_CLASS, f"a failure of the handler's own became a timeout: {failure}"
        assert failure.category == ErrorCategory.TRANSIENT or expected == "failure", failure
        if expected != "failure":
            assert failure.error_class.endswith(expected), failure


def _settle_all(pool: AsyncHandlerPool, handler: _Behaving, tasks: list[Task],
                timeout_s: float = 30) -> list[Completion]:
    """Every completion the pool gives for `tasks`, then (once the tasks that held on are released and ended)
    a check that nothing more comes and nothing holds a lane."""
    out = _collect(pool, len(tasks), timeout_s=timeout_s)
    handler.release.set()
    _eventually(lambda: pool.abandoned == 0, "every abandoned task to end once released", timeout_s=5)
    time.sleep(LATE_S)  # a late end of a task that was abandoned, or of one in its grace, would come out by now
    pool.expire()
    extra = pool.completed()
    assert extra == [], f"second completions: {[(_prefix(c), c.failure) for c in extra]}"
    assert pool.in_flight == 0 and pool.buffered == 0, "a lane is still held"
    assert pool.broken is None, pool.broken
    per_job = Counter(c.task.job.job_id for c in out)
    assert per_job == Counter({t.job.job_id: 1 for t in tasks}), f"not one completion per job: {per_job}"
    return out


def test_a_library_that_cancels_its_own_task_and_converts_it_fails_the_job_and_frees_its_key() -> None:
    """The reviewer's case: a library cancels the job's own task (no uncancel) and raises a transient error. That is
    the handler's failure, retried in process like any blip; it once left the job without any outcome, its key's
    lane held for ever (the task's cancelling() count was taken for the pool's cancel)."""
    handler = _Behaving()
    pool = AsyncHandlerPool(AsyncJobRunner(handler, RETRY3, ErrorClassifier(), "w"), size=4,  # type: ignore[arg-type]
                            job_timeout_s=30, thread_prefix="cvq-handler-outcome-test", cancel_grace_s=GRACE_S)
    pool.start()
    try:
        first, follower = _task(0), _task(1)
        follower.lane = first.lane
        handler.behaviours[first.job.job_id] = "self_cancels_and_converts"
        pool.offer([first, follower])
        started = time.monotonic()
        done = _collect(pool, 2, timeout_s=5)  # far within the 30 s job timeout: not the deadline's doing
        assert time.monotonic() - started < 5
        assert [_prefix(c) for c in done] == ["p0", "p1"]
        _assert_outcome(done[0], "ConnectionError")
        assert done[0].calls == 3 and handler.calls[first.job.job_id] == 3, "in-process retries were cut short"
        _assert_outcome(done[1], "result")
        assert pool.timed_out == 0 and pool.in_flight == 0 and pool.abandoned == 0
    finally:
        pool.close()


@pytest.mark.parametrize("behaviour", sorted(OUTCOMES))
def test_every_handler_behaviour_ends_its_job_exactly_once_and_frees_its_key(behaviour: str) -> None:
    handler = _Behaving()
    pool = _behaving_pool(handler)
    try:
        subject, follower, other = _task(0), _task(1), _task(2)
        follower.lane = subject.lane  # the subject's key's next job: runs only once the subject let go of the key
        handler.behaviours[subject.job.job_id] = behaviour
        pool.offer([subject, follower, other])
        done = _settle_all(pool, handler, [subject, follower, other])
        by_prefix = {_prefix(c): c for c in done}
        _assert_outcome(by_prefix["p0"], OUTCOMES[behaviour])
        _assert_outcome(by_prefix["p1"], "result")
        _assert_outcome(by_prefix["p2"], "result")
        lane = [_prefix(c) for c in done if c.task.lane == subject.lane]
        assert lane == ["p0", "p1"], "the key's jobs were not settled in order"
        assert pool.timed_out == (OUTCOMES[behaviour] == "timeout")
    finally:
        handler.release.set()
        pool.close()


@settings(derandomize=True, database=None, deadline=None, max_examples=12,
          suppress_health_check=[HealthCheck.too_slow])
@given(jobs=st.lists(st.tuples(st.sampled_from(sorted(OUTCOMES)), st.integers(min_value=0, max_value=2)),
                     min_size=1, max_size=7))
def test_any_mix_of_behaviours_on_shared_keys_settles_each_job_once_in_key_order(jobs: list[tuple[str, int]]) -> None:
    handler = _Behaving()
    pool = _behaving_pool(handler, size=3)
    try:
        lanes = [f"lane-{i}".encode() for i in range(3)]
        tasks = [_task(index, lane=lanes[lane]) for index, (_, lane) in enumerate(jobs)]
        for task, (behaviour, _) in zip(tasks, jobs, strict=True):
            handler.behaviours[task.job.job_id] = behaviour
        pool.offer(tasks)
        done = _settle_all(pool, handler, tasks, timeout_s=60)
        for completion in done:
            _assert_outcome(completion, OUTCOMES[handler.behaviours[completion.task.job.job_id]])
        for lane in lanes:  # one job per key at a time, settled in offer order
            assert [c.task.job.job_id for c in done if c.task.lane == lane] == \
                [t.job.job_id for t in tasks if t.lane == lane]
    finally:
        handler.release.set()
        pool.close()


@pytest.mark.parametrize(("behaviour", "when"), [
    *((b, "before_its_deadline") for b in ("hangs", "swallows", "swallows_then_fails", "shields", "finally_awaits",
                                          "late_return", "self_cancels_then_hangs")),
    # Timed out and cancelled, but still holding on within the grace: not settled yet, and then never.
    *((b, "in_its_grace") for b in ("swallows", "shields", "late_return")),
])
def test_a_job_still_running_when_the_pool_closes_is_left_unsettled(behaviour: str, when: str) -> None:
    """The worker's shutdown commits what finished, then closes the pool: a job still running then is neither
    failed nor timed out, so its record is consumed again after the restart."""
    handler = _Behaving()
    pool = _behaving_pool(handler)
    try:
        subject = _task(0)
        handler.behaviours[subject.job.job_id] = behaviour
        pool.offer([subject])
        _eventually(lambda: subject.job.job_id in handler.started, "the job to start")
        if when == "in_its_grace":
            _eventually(lambda: pool.timed_out == 1, "the job's deadline")
        pool.close()
        pool.thread.join(5)
        assert not pool.thread.is_alive(), "the loop did not stop"
        time.sleep(LATE_S)
        assert pool.completed() == [], "a job was settled after the pool began closing"
        assert subject.cancelled, "the runner was not told the job was cancelled"
    finally:
        handler.release.set()
        pool.close()


@pytest.mark.parametrize("ends", ["without_settling", "cancelled_before_it_ran"])
def test_a_job_task_that_ends_without_an_outcome_still_gets_one(ends: str) -> None:
    """The safety net under _one: however a job's task ends, its job is settled and its key freed."""
    pool = _pool(lambda job, ctx: SCORES)

    async def broken_one(job: object) -> None:
        if ends == "cancelled_before_it_ran":
            raise asyncio.CancelledError  # as a cancel delivered before the task's first step ends it
    pool._one = broken_one  # type: ignore[method-assign]
    try:
        first, follower = _task(0), _task(1)
        follower.lane = first.lane
        pool.offer([first, follower])
        done = _collect(pool, 2, timeout_s=5)
        assert [_prefix(c) for c in done] == ["p0", "p1"]
        assert all(c.failure is not None and c.failure.category == ErrorCategory.TRANSIENT for c in done)
        expected = "CancelledError" if ends == "cancelled_before_it_ran" else "RuntimeError"
        assert done[0].failure is not None and done[0].failure.error_class == expected
        assert pool.in_flight == 0
    finally:
        pool.close()


def test_a_task_abandoned_in_a_hung_read_counts_once_not_twice(tmp_path: Path) -> None:
    """A job that swallows its cancel while its FileReads thread is stuck holds two things, but is one abandoned
    handler: the task while it runs, then the thread while it stays stuck."""
    fifo = hung_file(tmp_path, "cv.txt")
    reads = FileReads(2)
    ended = threading.Event()

    async def handler(job: object, ctx: object) -> EvaluationScores:
        try:
            await reads.call(fifo.read_text)
        except asyncio.CancelledError:  # swallowed: the task runs on, past its grace
            while not ended.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.02)
        return SCORES

    pool = _pool(handler, timeout_s=TIMEOUT_S, grace_s=GRACE_S, max_abandoned=1, stuck_threads=lambda: reads.stuck)
    try:
        pool.offer([_task(0)])
        done = _collect(pool, 1)[0]
        assert done.failure is not None and done.failure.error_class == JOB_TIMEOUT_CLASS
        _eventually(lambda: reads.stuck_all == 1, "the read thread counted as stuck")
        assert pool.abandoned == 1, "the abandoned task and its stuck read thread were counted twice"
        pool.expire()
        assert pool.broken is None, pool.broken
        ended.set()  # the task ends; its read thread is still stuck: now the thread is the abandoned handler
        _eventually(lambda: reads.stuck == 1, "the stuck thread counted once its task ended")
        assert pool.abandoned == 1
        release(fifo)
        _eventually(lambda: pool.abandoned == 0, "nothing left abandoned once the read returned")
    finally:
        ended.set()
        release(fifo)
        pool.close()
