"""Blocking file reads for async handlers (a job's cv_ref), on a few threads of their own.

`asyncio.to_thread` runs on the event loop's default executor, which the loop shares with everything else that
needs a thread: aiohttp's DNS lookups, for one. A read hung on a dead mount never returns and Python cannot
interrupt it, so a handful of them fill that executor and every LLM call of the worker waits behind them. Here:
- reads run on at most `threads` threads, apart from the default executor;
- the caller awaits its read cancellably, so a job's timeout still ends the job at its deadline;
- a read still waiting for a thread when its caller gives up is dropped before it starts: they never pile up;
- a read whose caller gave up while its thread is in the call is *stuck* until the call returns. Once every thread
  is stuck, reads fail at once as transient instead of holding their jobs until the timeout;
- `stuck` counts those threads for the worker's abandoned handlers (worker.max_abandoned_handlers), but only once
  the task that gave up has ended: a task that swallowed its cancel and runs on is counted by the worker as an
  abandoned task already, and one job must count once, not twice;
- the threads are daemon threads. A ThreadPoolExecutor's are joined when the interpreter exits, so one hung read
  would keep a worker that stops (exit 5 included) from ever ending.
"""

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from cv_queue.errors import TransientJobError

T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class FileReads:
    """A bounded, dedicated executor for blocking reads awaited from an event loop (any loop: it owns none)."""

    def __init__(self, threads: int, name: str = "cvq-file-read") -> None:
        if threads < 1:
            raise ValueError("FileReads needs at least one thread")
        self.max_threads = threads
        self._name = name
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work
        self._waiting = 0  # reads queued that no thread took yet
        self._stuck: dict[Future[Any], asyncio.Task[Any] | None] = {}  # each stuck read, and the task that gave up

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on one of the threads; cancelling the await drops a read not yet started."""
        with self._lock:
            exhausted = len(self._stuck) >= self.max_threads
        if exhausted:
            # Waiting would only hold the job until its timeout: fail it now, and let the retry topic try later.
            raise TransientJobError(f"all {self.max_threads} file-read threads are stuck in reads that did not return "
                                    "(a hung mount?); not reading")
        future: Future[T] = Future()
        self._submit((future, fn, args))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():  # running (or just finished): only the call itself can end its thread's wait
                self._count_stuck(future)
            raise

    @property
    def stuck(self) -> int:
        """Threads still in a call whose caller stopped waiting for it and has ended (see the module's docstring)."""
        with self._lock:
            return sum(1 for caller in self._stuck.values() if caller is None or caller.done())

    @property
    def stuck_all(self) -> int:
        """Threads still in a call whose caller stopped waiting for it, whether or not that caller still runs."""
        with self._lock:
            return len(self._stuck)

    @property
    def threads(self) -> int:
        """Threads started so far (at most max_threads)."""
        with self._lock:
            return len(self._threads)

    def _count_stuck(self, future: Future[Any]) -> None:
        with self._lock:
            self._stuck[future] = asyncio.current_task()
        future.add_done_callback(self._unstuck)  # at once if the call has just ended

    def _unstuck(self, future: Future[Any]) -> None:
        with self._lock:
            self._stuck.pop(future, None)

    def _submit(self, work: _Work) -> None:
        with self._lock:
            self._queue.put(work)
            self._waiting += 1
            # Threads start only when no idle one will take the read, up to the bound.
            if self._waiting > self._idle and len(self._threads) < self.max_threads:
                thread = threading.Thread(target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            future, fn, args = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._waiting -= 1
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited for a thread
            try:
                result = fn(*args)
            except BaseException as exc:  # the caller's error, never this thread's end
                future.set_exception(exc)
            else:
                future.set_result(result)
