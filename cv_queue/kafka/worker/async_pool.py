"""Async handlers: one asyncio event loop per worker, many jobs in flight as network waits, not threads.

The same contract as the thread pool (pool.py), so the worker drives either one:
- at most `size` jobs at once, one per lane (key) at a time, in offer order per lane (the shared KeyedScheduler);
- every job runs under `job_timeout_s`; at the deadline its task is *cancelled* and the job fails as transient,
  class cv_queue.JobTimeout, whatever the handler does afterwards (a late answer is dropped);
- a task that has not ended `cancel_grace_s` after that cancel swallowed it (a bare `except:`, `asyncio.shield`, a
  `finally` that awaits). Like a hung thread it is *abandoned*: its job is settled as timed out at once, its lane
  freed, and the task left running on the loop with nobody waiting for it; when it ends, whatever it produced is
  dropped. Abandoned tasks, plus the handler's own stuck threads (`stuck_threads`, e.g. file reads hung on a dead
  mount), past `max_abandoned` make the pool `broken`: the worker commits what is complete and exits (code 5);
- a handler that blocks the loop (a sync call inside `async def`) stops every job and every timeout with it: a
  heartbeat on the loop notices, and the pool reports itself broken, so the worker commits and exits (code 5);
- with `admit` (a handler that keeps a budget of the provider's quota: LLMEvaluator.admit), the next job starts
  only once admit says it may; until then it waits in the pool, counted as buffered, so the worker's flow control
  pauses intake instead of starting calls the provider would refuse. Its job timeout starts when it starts.

Every job taken is settled exactly once (its completion queued, then its lane freed), whatever its task does: returns,
raises (BaseExceptions and a CancelledError the pool did not send included: a failure of the job), swallows its
cancel, or is cancelled before it ever ran. The one exception is `close`: from then on nothing is settled, and a job
still running is left for its record to be consumed again after the restart (the worker's shutdown has committed
what finished by then).
"""

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from cv_queue.errors import ErrorCategory
from cv_queue.kafka.wire.records import Failure
from cv_queue.kafka.worker.execution import Completion, CompletionQueue, Task, timeout_completion
from cv_queue.kafka.worker.inflight import KeyedScheduler

log = logging.getLogger("cv_queue.worker")

HEARTBEAT_S = 0.5
ADMIT_RECHECK_S = 0.5
CLOSE_TIMEOUT_S = 5.0


@dataclass(eq=False, slots=True)
class _Job:
    """One job's task on the loop, and how far its deadline got."""

    task: Task
    runner: "asyncio.Task[None] | None" = None
    timer: asyncio.TimerHandle | None = None  # the deadline, then the grace after the cancel
    timed_out: bool = False  # the deadline passed: the job's outcome is a timeout, whatever the handler returns
    settled: bool = False  # its completion was queued and its lane freed: anything later is dropped


class AsyncHandlerPool:
    """Runs Tasks with the coroutine function `run` on an event loop in a thread of its own."""

    def __init__(self, run: Callable[[Task], Awaitable[Completion]], size: int, job_timeout_s: float,
                 thread_prefix: str, on_close: Callable[[], Awaitable[None]] | None = None,
                 max_abandoned: int = 32, cancel_grace_s: float = 5.0,
                 stuck_threads: Callable[[], int] | None = None,
                 admit: Callable[[Task], float] | None = None) -> None:
        self._run = run
        self._admit = admit  # 0: the task may start; else seconds to wait before asking again
        self._admit_timer: asyncio.TimerHandle | None = None
        self._on_close = on_close  # e.g. the handler's aclose(): its HTTP connections belong to this loop
        self._stuck_threads = stuck_threads  # threads of the handler's own left in calls a timed-out job gave up
        self.size = size
        self.job_timeout_s = job_timeout_s
        self.max_abandoned = max_abandoned
        self.cancel_grace_s = cancel_grace_s
        self._scheduler: KeyedScheduler[Task] = KeyedScheduler(size)
        self._lock = threading.Lock()  # the scheduler is shared by the poll thread and the loop thread
        self._done = CompletionQueue()
        self._loop = asyncio.new_event_loop()
        self._jobs: set[_Job] = set()  # taken and not yet ended (abandoned ones included); only the loop edits
        self._abandoned: set[asyncio.Task[None]] = set()  # settled as timed out, still running; only the loop edits
        self._closing = False  # close() began: nothing is settled any more; only the loop reads and writes it
        self._taking = True
        self._beat = time.monotonic()
        self.thread = threading.Thread(target=self._serve, name=f"{thread_prefix}-loop", daemon=True)
        self.threads = [self.thread]
        self.timed_out = 0
        self.broken: str | None = None

    # ------------------------------------------------------------------ the poll loop's side

    def start(self) -> None:
        self.thread.start()

    def offer(self, tasks: list[Task]) -> None:
        if not tasks:
            return
        with self._lock:
            for task in tasks:
                self._scheduler.offer(task.lane, task, task.delivery.interactive)
        self._loop.call_soon_threadsafe(self._pump)

    def completed(self) -> list[Completion]:
        return self._done.drain()

    def wait_completed(self, timeout_s: float) -> Completion | None:
        return self._done.wait(timeout_s)

    def expire(self, now: float | None = None) -> list[Completion]:
        """Timeouts are enforced on the loop, by cancellation and abandonment; here the pool only judges whether it
        can still serve: a blocked loop, or too many abandoned tasks and stuck threads."""
        now = time.monotonic() if now is None else now
        if self.broken is not None:
            return []
        if self.thread.is_alive() and now - self._beat > max(self.job_timeout_s, 5 * HEARTBEAT_S):
            self.broken = (f"the event loop has not run for {now - self._beat:.0f}s: an async handler is blocking "
                           "it (a synchronous call inside `async def`?)")
        # Read after the abandoned jobs' completions were queued (the loop queues first), so the worker's drain
        # after this verdict settles every one of them. Threads before tasks: see `abandoned`.
        elif (threads := self._stuck()) + (tasks := self._abandoned_tasks()) > self.max_abandoned:
            self.broken = (f"{tasks} async job task(s) ignored their cancellation and {threads} handler thread(s) "
                           f"are stuck in calls of timed-out jobs (max_abandoned_handlers={self.max_abandoned}); "
                           "restart the worker to free them")
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

    @property
    def abandoned(self) -> int:
        """Tasks abandoned after ignoring their cancellation and still running, plus the handler's stuck threads.

        A thread stuck in a call of a task that still runs is the handler's to leave out (FileReads counts it only
        once its caller ended), so a task abandoned in the middle of a hung read counts once, not twice. Both sides
        go by the task's done(); the threads are read first, so a task that ends between the two reads is missed
        once rather than counted twice."""
        threads = self._stuck()
        return threads + self._abandoned_tasks()

    def _stuck(self) -> int:
        return self._stuck_threads() if self._stuck_threads is not None else 0

    def _abandoned_tasks(self) -> int:
        # Read from the poll thread while the loop edits the set: tuple() copies it in one step under the GIL.
        return sum(1 for runner in tuple(self._abandoned) if not runner.done())

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
        while not self._closing:
            with self._lock:
                taken = self._take_admitted()
            if taken is None:
                return
            job = _Job(taken[1])
            job.runner = self._loop.create_task(self._one(job))
            job.timer = self._loop.call_later(self.job_timeout_s, self._deadline, job)
            self._jobs.add(job)
            job.runner.add_done_callback(partial(self._ended, job))

    def _take_admitted(self) -> tuple[object, Task] | None:
        """The next task the scheduler would start, if `admit` lets it (under the lock)."""
        if not self._taking:
            return None
        if self._admit is not None:
            head = self._scheduler.peek()
            if head is None:
                return None
            wait = self._admit(head[1])
            if wait > 0:
                self._pump_in(wait)
                return None
        return self._scheduler.take()

    def _pump_in(self, wait_s: float) -> None:
        # Asked again at least every half second: the budget may grow sooner (a worker left the fleet).
        when = self._loop.time() + min(wait_s, ADMIT_RECHECK_S)
        if self._admit_timer is not None and self._admit_timer.when() <= when:
            return
        if self._admit_timer is not None:
            self._admit_timer.cancel()
        self._admit_timer = self._loop.call_at(when, self._pump_after_wait)

    def _pump_after_wait(self) -> None:
        self._admit_timer = None
        self._pump()

    async def _one(self, job: _Job) -> None:
        task = job.task
        try:
            completion = await self._run(task)
        except asyncio.CancelledError as exc:
            if self._closing:
                return  # the worker is closing: the job is left unsettled, and its record is consumed again
            # The deadline's cancel (its timeout replaces this below), or a cancel the pool never sent that the
            # runner passed on (a library that cancelled its own task): either way an outcome of the job. Returning
            # without one would hold its key's lane, and its partition's commit, for ever.
            completion = _runner_failure(task, exc)
        except BaseException as exc:  # the runner never raises; if it does, the job still gets an outcome
            completion = _runner_failure(task, exc)
        self._conclude(job, completion)

    def _conclude(self, job: _Job, completion: Completion) -> None:
        if job.settled:
            # Abandoned after ignoring its cancellation: the job already has its timeout, and its lane may run the
            # key's next job by now. A second completion would produce a second output and free that lane early.
            log.warning("job %s ended after it was abandoned; its late outcome is dropped", job.task.job.job_id)
            return
        if job.timed_out:
            # The deadline decides: a handler that swallowed the cancel and then returned or failed still timed out.
            completion = timeout_completion(job.task, self.job_timeout_s)
        self._settle(job, completion)

    def _ended(self, job: _Job, runner: "asyncio.Task[None]") -> None:
        """The job's task ended. _one settles on every path it runs; this catches a task that never ran it (cancelled
        before its first step) or failed in it, so that no job can hold its key's lane for ever."""
        self._jobs.discard(job)
        if job.settled or self._closing:
            return
        exc: BaseException = asyncio.CancelledError() if runner.cancelled() else (
            runner.exception() or RuntimeError("the job's task ended without settling it"))
        log.error("job %s: its task ended without an outcome (%r); failed as transient", job.task.job.job_id, exc)
        self._conclude(job, _runner_failure(job.task, exc))

    def _settle(self, job: _Job, completion: Completion) -> None:
        if job.settled or self._closing:
            return  # exactly once; and once the worker is closing, never: the job runs again after the restart
        job.settled = True
        if job.timer is not None:
            job.timer.cancel()
        # Queued before the lane is freed, so a shutdown that waits for in_flight == 0 always finds it.
        self._done.put(completion)
        with self._lock:
            self._scheduler.done(job.task.lane)
        self._pump()

    def _deadline(self, job: _Job) -> None:
        if job.settled or self._closing or job.runner is None or job.runner.done():
            return  # a task that ended unsettled is settled by _ended, already scheduled
        job.timed_out = True
        job.task.cancelled = True  # before the cancel: the runner passes it on and makes no further call
        self.timed_out += 1
        log.warning("job %s exceeded job_timeout_s=%gs: cancelled, failed as transient", job.task.job.job_id,
                    self.job_timeout_s)
        job.runner.cancel()
        job.timer = self._loop.call_later(self.cancel_grace_s, self._abandon, job)

    def _abandon(self, job: _Job) -> None:
        runner = job.runner
        if job.settled or self._closing or runner is None or runner.done():
            return
        self._settle(job, timeout_completion(job.task, self.job_timeout_s))
        # Counted only after its completion is queued (see expire); it leaves the count when the task ends.
        self._abandoned.add(runner)
        runner.add_done_callback(self._abandoned.discard)
        log.error("job %s ignored its cancellation for cancel_grace_s=%gs: settled as timed out, its key freed, its "
                  "task abandoned (%d abandoned; the worker exits past max_abandoned_handlers=%d)",
                  job.task.job.job_id, self.cancel_grace_s, len(self._abandoned), self.max_abandoned)

    def _cancel_all(self) -> None:
        self._closing = True  # first: a job the cancel below ends is left unsettled, not failed
        for job in list(self._jobs):
            job.task.cancelled = True
            if job.timer is not None:
                job.timer.cancel()
            if job.runner is not None:
                job.runner.cancel()
        self._loop.create_task(self._finish())

    async def _finish(self) -> None:
        if self._on_close is not None:
            try:
                await asyncio.wait_for(self._on_close(), CLOSE_TIMEOUT_S)
            except Exception as exc:  # closing connections must not keep the worker from stopping
                log.warning("closing the async handler failed: %r", exc)
        self._loop.stop()


def _runner_failure(task: Task, exc: BaseException) -> Completion:
    """A transient failure of the job for what came out of its runner instead of a completion, as the thread pool
    records a runner that raised."""
    return Completion(task, max(task.calls, 1), None, Failure(
        ErrorCategory.TRANSIENT, type(exc).__qualname__, f"job runner failed: {exc!r}", ""))
