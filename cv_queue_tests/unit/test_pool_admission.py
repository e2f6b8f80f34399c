"""The async pool starts a job only when the handler's budget admits it: until then the job waits in the pool,
counted as buffered (so flow control pauses intake), and its job timeout has not started."""

import threading
import time

from cv_queue.kafka.worker.async_pool import AsyncHandlerPool
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.kafka.worker.execution import AsyncJobRunner, Task
from cv_queue_tests.unit.test_async_abandon import RETRY, SCORES, _collect, _eventually, _task


def test_jobs_wait_in_the_pool_until_admitted_in_offer_order_without_their_timeout_running() -> None:
    opened = threading.Event()
    asked: list[str] = []
    started: list[str] = []

    def admit(task: Task) -> float:
        asked.append(task.job.job_id)
        return 0.0 if opened.is_set() else 5.0  # long: the pool must ask again sooner than that on its own

    async def handler(job, ctx):  # type: ignore[no-untyped-def]
        started.append(job.job_id)
        return SCORES

    pool = AsyncHandlerPool(AsyncJobRunner(handler, RETRY, ErrorClassifier(), "w"), size=4,  # type: ignore[arg-type]
                            job_timeout_s=0.3, thread_prefix="cvq-handler-admission-test", admit=admit)
    pool.start()
    try:
        tasks = [_task(i) for i in range(6)]
        pool.offer(tasks)
        _eventually(lambda: len(asked) >= 3, "the pool to ask again while the budget is spent")
        time.sleep(0.6)  # twice the job timeout: a timeout started at offer time would have fired by now
        assert (pool.in_flight, pool.buffered, started) == (0, 6, [])
        opened.set()
        completions = _collect(pool, 6)
    finally:
        pool.close()
    assert all(c.failure is None for c in completions), [c.failure for c in completions]
    assert started == [t.job.job_id for t in tasks]
    assert set(asked) == {t.job.job_id for t in tasks}


def test_the_thread_pool_starts_no_job_while_held_and_resumes_when_the_hold_ends() -> None:
    from cv_queue.kafka.worker.execution import JobRunner
    from cv_queue.kafka.worker.pool import HandlerPool

    opened = threading.Event()
    asked = threading.Semaphore(0)
    started: list[str] = []

    def hold() -> float:
        asked.release()
        return 0.0 if opened.is_set() else 3600.0  # the rest of a spent window: the pool must ask again sooner

    def handler(job, ctx):  # type: ignore[no-untyped-def]
        started.append(job.job_id)
        return SCORES

    pool = HandlerPool(lambda: JobRunner(handler, RETRY, ErrorClassifier(), "w"), size=2,  # type: ignore[arg-type]
                       job_timeout_s=0.3, max_abandoned=2, thread_prefix="cvq-handler-hold-test", hold=hold)
    pool.start()
    try:
        tasks = [_task(i) for i in range(4)]
        pool.offer(tasks)
        for _ in range(6):  # each thread asked more than once: it waits in rechecks, not for the whole hour
            assert asked.acquire(timeout=30), "the pool stopped asking whether the hold ended"
        assert (pool.in_flight, pool.buffered, started) == (0, 4, [])
        opened.set()
        completions = _collect(pool, 4)
    finally:
        pool.close()
    assert all(c.failure is None for c in completions), [c.failure for c in completions]
    assert sorted(started) == sorted(t.job.job_id for t in tasks)
