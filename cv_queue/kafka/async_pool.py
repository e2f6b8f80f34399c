"""Async handlers: one asyncio event loop per worker, many jobs in flight as network waits, not threads.

The same contract as the thread pool (pool.py), so the worker drives either one:
- at most `size` jobs at once, one per lane (key) at a time, in offer order per lane (the shared KeyedScheduler);
- every job runs under `job_timeout_s`; at the deadline its task is *cancelled* (no thread is left behind) and the
  job fails as transient, class cv_queue.JobTimeout;
- a handler that blocks the loop (a sync call inside `async def`) stops every job and every timeout with it: a
  heartbeat on the loop notices, and the pool reports itself broken, so the worker commits and exits (code 5).
"""

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from cv_queue.errors import ErrorCategory
from cv_queue.kafka.execution import Completion, CompletionQueue, Task, timeout_completion
from cv_queue.kafka.inflight import KeyedScheduler
from cv_queue.kafka.records import Failure

log = logging.getLogger("cv_queue.worker")

HEARTBEAT_S = 0.5
CLOSE_TIMEOUT_S = 5.0


class AsyncHandlerPool:
    """Runs Tasks with the coroutine function `run` on an event loop in a thread of its own."""

    def __init__(self, run: Callable[[Task], Awaitable[Completion]], size: int, job_timeout_s: float,
                 thread_prefix: str, on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self._run = run
        self._on_close = on_close  # e.g. the handler's aclose(): its HTTP connections belong to this loop
        self.size = size
        self.job_timeout_s = job_timeout_s
        self._scheduler: KeyedScheduler[Task] = KeyedScheduler(size)
        self._lock = threading.Lock()  # the scheduler is shared by the poll thread and the loop thread
        self._done = CompletionQueue()
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._taking = True
        self._beat = time.monotonic()
        self.thread = threading.Thread(target=self._serve, name=f"{thread_prefix}-loop", daemon=True)
        self.threads = [self.thread]
        self.timed_out = 0
        self.abandoned = 0  # cancelled tasks leave nothing behind
        self.broken: str | None = None

    # ------------------------------------------------------------------ the poll loop's side

    def start(self) -> None:
        self.thread.start()

    def offer(self, tasks: list[Task]) -> None:
        if not tasks:
            return
        with self._lock:
            for task in tasks:
                self._scheduler.offer(task.lane, task)
        self._loop.call_soon_threadsafe(self._pump)

    def completed(self) -> list[Completion]:
        return self._done.drain()

    def wait_completed(self, timeout_s: float) -> Completion | None:
        return self._done.wait(timeout_s)

    def expire(self, now: float | None = None) -> list[Completion]:
        """Timeouts are enforced on the loop by cancellation; here only a blocked loop is detected."""
        now = time.monotonic() if now is None else now
        if self.thread.is_alive() and now - self._beat > max(self.job_timeout_s, 5 * HEARTBEAT_S) \
                and self.broken is None:
            self.broken = (f"the event loop has not run for {now - self._beat:.0f}s: an async handler is blocking "
                           "it (a synchronous call inside `async def`?)")
        return []

    def stop_taking(self) -> None:
        with self._lock:
            self._taking = False

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._cancel_all)

    @property
    def in_flight(self) -> int:
        return self._scheduler.in_flight

    @property
    def buffered(self) -> int:
        return self._scheduler.buffered

    # ------------------------------------------------------------------ the loop's side

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._heartbeat)
        try:
            self._loop.run_forever()
        except BaseException as exc:
            log.critical("the async handler loop died: %r", exc)
            self.broken = self.broken or f"the async handler loop died: {exc!r}"
        finally:
            self._loop.close()

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        self._loop.call_later(HEARTBEAT_S, self._heartbeat)

    def _pump(self) -> None:
        while True:
            with self._lock:
                taken = self._scheduler.take() if self._taking else None
            if taken is None:
                return
            job = self._loop.create_task(self._one(taken[1]))
            self._tasks.add(job)
            job.add_done_callback(self._tasks.discard)

    async def _one(self, task: Task) -> None:
        try:
            async with asyncio.timeout(self.job_timeout_s):
                completion = await self._run(task)
        except TimeoutError:
            self.timed_out += 1
            log.warning("job %s exceeded job_timeout_s=%gs: cancelled, failed as transient", task.job.job_id,
                        self.job_timeout_s)
            completion = timeout_completion(task, self.job_timeout_s)
        except asyncio.CancelledError:
            return  # the worker is closing: the job is not settled and its record is consumed again
        except Exception as exc:  # the runner never raises; if it does, the job still gets an outcome
            completion = Completion(task, max(task.calls, 1), None, Failure(
                ErrorCategory.TRANSIENT, type(exc).__qualname__, f"job runner failed: {exc!r}", ""))
        # Queued before the lane is freed, so a shutdown that waits for in_flight == 0 always finds it.
        self._done.put(completion)
        with self._lock:
            self._scheduler.done(task.lane)
        self._pump()

    def _cancel_all(self) -> None:
        for job in list(self._tasks):
            job.cancel()
        self._loop.create_task(self._finish())

    async def _finish(self) -> None:
        if self._on_close is not None:
            try:
                await asyncio.wait_for(self._on_close(), CLOSE_TIMEOUT_S)
            except Exception as exc:  # closing connections must not keep the worker from stopping
                log.warning("closing the async handler failed: %r", exc)
        self._loop.stop()
