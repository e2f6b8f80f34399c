"""Work in flight: per-key ordering, delayed retries, and the contiguous-offset watermark.

Pure data structures, no I/O, so the rules that make exactly-once output hold can be tested alone:
- a partition's committable offset only moves over a contiguous run of *settled* records;
- a settled record's output is released only when the watermark passes it, so a crash can never
  leave a committed output whose offset is not also committed;
- two records with the same key never run at once, and run in offset order.
"""

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
K = Hashable


class PartitionTracker(Generic[T]):
    """Offsets of one source partition between "polled" and "committed", with their held-back outputs.

    It also counts the bytes it stands for (records not yet settled, then their outputs until released), which is
    what the worker's per-partition memory cap reads.
    """

    def __init__(self, committed: int) -> None:
        self.committed = committed  # the next offset to consume after a restart
        self.open_bytes = 0
        self._order: deque[int] = deque()
        self._outputs: dict[int, T | None] = {}
        self._sizes: dict[int, int] = {}
        self._settled: set[int] = set()

    def track(self, offset: int, size: int = 0) -> None:
        if self._order and offset <= self._order[-1]:
            raise ValueError(f"offset {offset} tracked out of order (last {self._order[-1]})")
        if offset < self.committed:  # the watermark never moves backwards
            raise ValueError(f"offset {offset} is below the committed offset {self.committed}")
        self._order.append(offset)
        self._outputs[offset] = None
        self._sizes[offset] = size
        self.open_bytes += size

    def settle(self, offset: int, output: T | None, size: int = 0) -> None:
        """Record that an offset is finished; its output (of `size` bytes) waits until the watermark passes it."""
        if offset not in self._outputs or offset in self._settled:
            raise KeyError(f"offset {offset} is not in flight")
        self._outputs[offset] = output
        self._settled.add(offset)
        self.open_bytes += size - self._sizes[offset]
        self._sizes[offset] = size

    def is_open(self, offset: int) -> bool:
        """Tracked and not yet settled."""
        return offset in self._outputs and offset not in self._settled

    def release(self) -> tuple[int, list[T]]:
        """Pop the settled prefix: the new committable offset and the outputs it carries, in order."""
        outputs: list[T] = []
        while self._order and self._order[0] in self._settled:
            offset = self._order.popleft()
            self._settled.discard(offset)
            self.open_bytes -= self._sizes.pop(offset)
            out = self._outputs.pop(offset)
            if out is not None:
                outputs.append(out)
            self.committed = offset + 1
        return self.committed, outputs

    @property
    def open_count(self) -> int:
        return len(self._order)

    @property
    def held_back(self) -> int:
        """Settled records above the watermark: done, but waiting for an older record."""
        return len(self._settled)


class KeyedScheduler(Generic[T]):
    """Bounded concurrency with per-key serialisation.

    `offer` accepts work; `take` hands out the next runnable item while fewer than `max_in_flight` run;
    `done` frees the slot and promotes the key's next item. Keys other than a busy one are never
    blocked by it, which is what keeps one poison-pill key from stalling a partition.
    """

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._busy: dict[K, deque[T]] = {}  # key -> items waiting behind the running one
        self._ready: deque[tuple[K, T]] = deque()
        self._waiting_count = 0

    def offer(self, key: K, item: T) -> None:
        queue = self._busy.get(key)
        if queue is not None:
            queue.append(item)
            self._waiting_count += 1
        else:
            self._busy[key] = deque()
            self._ready.append((key, item))

    def take(self) -> tuple[K, T] | None:
        if self.in_flight >= self.max_in_flight or not self._ready:
            return None
        self.in_flight += 1
        return self._ready.popleft()

    def done(self, key: K) -> None:
        self.in_flight -= 1
        queue = self._busy[key]
        if queue:
            self._ready.append((key, queue.popleft()))
            self._waiting_count -= 1
        else:
            del self._busy[key]

    @property
    def buffered(self) -> int:
        """Items accepted but not running."""
        return len(self._ready) + self._waiting_count


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
