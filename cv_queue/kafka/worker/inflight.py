"""Work in flight: per-key ordering and delayed retries (the offsets themselves: tracker.py).

Pure data structures, no I/O, so the rules can be tested alone: two records with the same key never run at
once, and run in offset order; a retry waits for its due time.
"""

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from cv_queue.kafka.worker.tracker import PartitionTracker, Release

__all__ = ["DueQueue", "KeyedScheduler", "PartitionTracker", "Release"]

T = TypeVar("T")
K = Hashable


class KeyedScheduler(Generic[T]):
    """Bounded concurrency with per-key serialisation, urgent items first.

    `offer` accepts work; `take` hands out the next runnable item while fewer than `max_in_flight` run, an urgent
    one (the interactive lane) before any other; `done` frees the slot and promotes the key's next item. Keys other
    than a busy one are never blocked by it, which is what keeps one poison-pill key from stalling a partition. A
    key's items run in offer order whatever their urgency: urgency decides between keys, never within one.
    """

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._busy: dict[K, deque[tuple[T, bool]]] = {}  # key -> items (and urgency) waiting behind the running one
        self._ready: deque[tuple[K, T]] = deque()
        self._urgent: deque[tuple[K, T]] = deque()
        self._waiting_count = 0

    def offer(self, key: K, item: T, urgent: bool = False) -> None:
        queue = self._busy.get(key)
        if queue is not None:
            queue.append((item, urgent))
            self._waiting_count += 1
        else:
            self._busy[key] = deque()
            (self._urgent if urgent else self._ready).append((key, item))

    def peek(self) -> tuple[K, T] | None:
        """What `take` would hand out now, without taking it."""
        if self.in_flight >= self.max_in_flight:
            return None
        if self._urgent:
            return self._urgent[0]
        return self._ready[0] if self._ready else None

    def take(self) -> tuple[K, T] | None:
        if self.in_flight >= self.max_in_flight or not (self._urgent or self._ready):
            return None
        self.in_flight += 1
        return (self._urgent or self._ready).popleft()

    def done(self, key: K) -> None:
        self.in_flight -= 1
        queue = self._busy[key]
        if queue:
            item, urgent = queue.popleft()
            (self._urgent if urgent else self._ready).append((key, item))
            self._waiting_count -= 1
        else:
            del self._busy[key]

    @property
    def buffered(self) -> int:
        """Items accepted but not running."""
        return len(self._ready) + len(self._urgent) + self._waiting_count


class DueQueue(Generic[T]):
    """Items that may not run before a due time (epoch ms), popped in due order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()

    def push(self, due_ms: int, item: T) -> None:
        heapq.heappush(self._heap, (due_ms, next(self._seq), item))

    def pop_due(self, now_ms: int) -> list[T]:
        out = []
        while self._heap and self._heap[0][0] <= now_ms:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def next_due_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
