"""Inline execution: a handler that declares itself fast (`inline = True`) runs on the poll thread itself.

For a handler that takes microseconds (the no-op, a keyword scorer), handing each job to another thread costs more
than the job: two context switches and a condition variable per job. Run inline, jobs of one poll batch run one
after the other in offset order, so per-key order holds trivially and nothing waits on a lock. The price: no job
timeout can interrupt the poll thread, so only handlers that never block may say `inline = True`.
"""

from collections.abc import Callable

from cv_queue.kafka.worker.execution import Completion, Task


class InlinePool:
    """The pool contract of pool.py, with every job run during `offer`."""

    def __init__(self, run: Callable[[Task], Completion]) -> None:
        self._run = run
        self._done: list[Completion] = []
        self._taking = True
        self.threads: list = []
        self.timed_out = 0
        self.abandoned = 0
        self.broken: str | None = None
        self.in_flight = 0
        self.buffered = 0

    def start(self) -> None:
        pass

    def offer(self, tasks: list[Task]) -> None:
        if self._taking:
            self._done.extend(self._run(task) for task in tasks)

    def completed(self) -> list[Completion]:
        done, self._done = self._done, []
        return done

    def wait_completed(self, timeout_s: float) -> Completion | None:
        return self._done.pop(0) if self._done else None

    def expire(self, now: float | None = None) -> list[Completion]:
        return []

    def stop_taking(self) -> None:
        self._taking = False

    def close(self) -> None:
        pass
