"""Handler threads: bounded concurrency, one job per lane at a time, and a deadline on every job.

Threads take their next job themselves under a condition, so a finished job's capacity is refilled at once, not
when the poll loop next comes round. A job that outlives `job_timeout_s` is given a timeout failure by `expire`,
its lane is freed and a replacement thread is started, so capacity is not lost to a hung handler; the stuck thread
is *abandoned* (Python cannot kill a thread) and its late answer is dropped. Too many abandoned threads, or a pool
thread that died, make the pool `broken`: the worker then commits what is complete and exits, and its restart
frees the stuck threads.
"""

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cv_queue.errors import ErrorCategory
from cv_queue.kafka.wire.records import Failure
from cv_queue.kafka.worker.execution import Completion, CompletionQueue, Task, timeout_completion
from cv_queue.kafka.worker.inflight import KeyedScheduler

log = logging.getLogger("cv_queue.worker")

HOLD_RECHECK_S = 0.5


@dataclass(slots=True)
class _Running:
    task: Task
    started: float  # time.monotonic()
    thread: threading.Thread


class HandlerPool:
    """Runs Tasks with `run` (which must not raise) on `size` threads."""

    def __init__(self, run_factory: Callable[[], Callable[[Task], Completion]], size: int, job_timeout_s: float,
                 max_abandoned: int, thread_prefix: str, hold: Callable[[], float] | None = None) -> None:
        self._run_factory = run_factory  # one runner per thread: a runner need not be thread-safe
        self.size = size
        self.job_timeout_s = job_timeout_s
        self.max_abandoned = max_abandoned
        self._prefix = thread_prefix
        self._scheduler: KeyedScheduler[Task] = KeyedScheduler(size)
        self._cond = threading.Condition()
        self._done = CompletionQueue()
        self._running: dict[int, _Running] = {}
        self._tokens = itertools.count()
        self._names = itertools.count()
        self._taking = True
        self._closing = False
        self._abandoned: list[threading.Thread] = []
        self.threads: list[threading.Thread] = []
        self.timed_out = 0
        self.broken: str | None = None  # why the pool cannot serve any more
        # > 0: the seconds no job may start for (a handler whose spend limit is reached); asked before each start.
        self._hold = hold

    # ------------------------------------------------------------------ the poll loop's side

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def offer(self, tasks: list[Task]) -> None:
        """Hand tasks to the scheduler and wake as many threads as there are new tasks."""
        if not tasks:
            return
        with self._cond:
            for task in tasks:
                self._scheduler.offer(task.lane, task, task.delivery.interactive)
            self._cond.notify(len(tasks))

    def completed(self) -> list[Completion]:
        return self._done.drain()

    def wait_completed(self, timeout_s: float) -> Completion | None:
        return self._done.wait(timeout_s)

    def expire(self, now: float | None = None) -> list[Completion]:
        """Fail the jobs running longer than the timeout; free their lanes and replace their threads."""
        now = time.monotonic() if now is None else now
        expired: list[Completion] = []
        with self._cond:
            for token, running in list(self._running.items()):
                if now - running.started < self.job_timeout_s:
                    continue
                del self._running[token]
                self._scheduler.done(running.task.lane)
                self._abandoned.append(running.thread)
                self.threads.remove(running.thread)
                if not self._closing:
                    self._spawn()
                expired.append(timeout_completion(running.task, self.job_timeout_s))
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            if len(self._abandoned) > self.max_abandoned and self.broken is None:
                self.broken = (f"{len(self._abandoned)} handler threads are stuck in jobs that timed out "
                               f"(max_abandoned_handlers={self.max_abandoned}); restart the worker to free them")
            if expired:
                self._cond.notify(len(expired))
        self.timed_out += len(expired)
        return expired

    def stop_taking(self) -> None:
        """Running jobs finish; buffered ones are not started (their records are redelivered later)."""
        with self._cond:
            self._taking = False

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        return self._scheduler.in_flight

    @property
    def buffered(self) -> int:
        return self._scheduler.buffered

    @property
    def abandoned(self) -> int:
        return len(self._abandoned)

    # ------------------------------------------------------------------ the handler threads' side

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"{self._prefix}-{next(self._names)}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _take(self) -> tuple[int, Task] | None:
        with self._cond:
            while not self._closing:
                held_s = self._hold() if self._hold is not None else 0.0
                if self._taking and held_s <= 0 and (taken := self._scheduler.take()) is not None:
                    token = next(self._tokens)
                    self._running[token] = _Running(taken[1], time.monotonic(), threading.current_thread())
                    return token, taken[1]
                # Held: asked again at least every HOLD_RECHECK_S (the hold may end early: a new window).
                self._cond.wait(min(held_s, HOLD_RECHECK_S) if held_s > 0 else None)
        return None

    def _serve(self) -> None:
        try:
            run = self._run_factory()
            while (taken := self._take()) is not None:
                token, task = taken
                try:
                    completion = run(task)
                except BaseException as exc:  # the runner should not raise; if it does, the job fails
                    completion = Completion(task, max(task.calls, 1), None, Failure(
                        ErrorCategory.TRANSIENT, type(exc).__qualname__, f"job runner failed: {exc!r}", ""))
                with self._cond:
                    if self._running.pop(token, None) is None:
                        return  # timed out meanwhile: the job already has its failure and this thread a successor
                    # Queued before the lane is freed, so a shutdown that waits for in_flight == 0 always finds it.
                    self._done.put(completion)
                    self._scheduler.done(task.lane)
                    self._cond.notify()
        except BaseException as exc:  # a pool thread must never vanish without a word
            log.critical("handler thread %s died: %r", threading.current_thread().name, exc)
            with self._cond:
                self.broken = self.broken or f"handler thread {threading.current_thread().name} died: {exc!r}"
