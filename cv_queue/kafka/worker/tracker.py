"""One source partition's offsets between "fetched" and "committed", and the outputs that wait to be produced.

Pure data, no I/O, so the rules that make exactly-once output hold can be tested alone (unit and state-machine
tests drive this class with random settle orders and crashes):
- every offset is *open* (its job runs), *held* (settled, its output not yet produced) or *done* (its output went
  into a transaction, together with a commit that records the offset as done);
- the committed offset C is the lowest offset not done; the done offsets above it travel as the commit's
  metadata (offset_map.py), so a restart skips them instead of running their jobs a second time;
- an output is released (handed to the transaction) only when the map that records its offset as done fits the
  broker's metadata limit; one that does not fit stays held until C moves, as every output did before the map;
- outputs are released in offset order within a partition (a held output keeps every higher one held), so two
  jobs of one key, which run one after the other, publish in that order too.
"""

import bisect
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cv_queue.kafka.worker.offset_map import SettledAbove, encode, payload_fits

T = TypeVar("T")
log = logging.getLogger("cv_queue.worker")


@dataclass(slots=True)
class Release(Generic[T]):
    """What one commit sends for a partition: the offset, its map, and the outputs that became done."""

    offset: int
    metadata: str
    outputs: list[T] = field(default_factory=list)


class PartitionTracker(Generic[T]):
    """Offsets of one source partition in the worker; see the module docstring.

    `committed` is the offset of the last release (-1 before any), `open_bytes` the bytes of open and held records
    (what the per-partition memory cap reads), `map_bytes` the size of the last map sent (what the metadata
    backpressure reads). `recorded`: the offset the group holds when a reset moved `committed` away from it (the
    committed offset lay outside the log: resume.py); the first release then commits `committed` even with nothing
    done, so the group's offset is never left outside the log.
    """

    def __init__(self, committed: int, settled_above: SettledAbove | None = None, *,
                 recorded: int | None = None) -> None:
        self.committed = committed
        self.open_bytes = 0
        self.map_bytes = 0
        self.skipped = 0  # records fetched that an earlier worker had already done (from the restored map)
        self.blocked = False  # the last release could not fit even the settled prefix's map (see _plan)
        self._not_done: list[int] = []  # open, held, and restored offsets not fetched yet; ascending
        self._open: dict[int, int] = {}  # offset -> bytes of the record
        self._held: dict[int, tuple[T | None, int]] = {}  # offset -> (output, bytes)
        self._last_tracked = -1
        self._high_done = -1  # the highest done offset, the top of the map while above `committed`
        self._restored_high = -1  # offsets up to here that are not in _restored_pending were done before a restart
        self._restored_pending: set[int] = set()
        self._restored_order: deque[int] = deque()  # the same offsets, ascending, to find those that vanished
        self.vanished = 0  # restored offsets the log no longer has (retention, DeleteRecords): nothing to run
        self._last_sent: tuple[int, str] = (committed, "")
        if settled_above is not None and not settled_above.empty:
            if settled_above.base != committed:
                raise ValueError(f"a map of offset {settled_above.base} restored at offset {committed}")
            self._restored_high = self._high_done = settled_above.high
            self._restored_pending = {committed, *settled_above.incomplete}
            self._not_done = sorted(self._restored_pending)
            self._restored_order = deque(self._not_done)
            self._last_sent = (committed, encode(committed, settled_above.high, settled_above.incomplete))
            self.map_bytes = len(self._last_sent[1]) + 1
        if recorded is not None and recorded != committed:
            self._last_sent = (recorded, "")

    # ------------------------------------------------------------------ records in

    def track(self, offset: int, size: int = 0) -> bool:
        """A fetched record; False when the restored map says it is already done (its job must not run again)."""
        if offset <= self._last_tracked:
            raise ValueError(f"offset {offset} tracked out of order (last {self._last_tracked})")
        if self._restored_order and self._restored_order[0] < offset:
            self._drop_vanished(offset)
        if offset in self._restored_pending:
            self._restored_pending.discard(offset)  # already in _not_done
            self._restored_order.popleft()
        elif offset <= self._restored_high:
            # Done before the restart. It may even lie below the committed offset: once the restored map's open
            # offsets finish, the commit moves past the done ones above them before they are fetched again.
            self._last_tracked = offset
            self.skipped += 1
            return False
        elif offset < self.committed:  # the committed offset never moves backwards
            raise ValueError(f"offset {offset} is below the committed offset {self.committed}")
        else:
            self._not_done.append(offset)  # above everything listed: fetches come in offset order
        self._last_tracked = offset
        self._open[offset] = size
        self.open_bytes += size
        return True

    def _drop_vanished(self, offset: int) -> None:
        """Restored offsets below `offset` that were never fetched are gone from the log (fetches come in offset
        order): nothing can run them, and keeping them would pin the committed offset for ever."""
        gone = []
        while self._restored_order and self._restored_order[0] < offset:
            earlier = self._restored_order.popleft()
            if earlier in self._restored_pending:
                self._restored_pending.discard(earlier)
                gone.append(earlier)
        if gone:
            vanished = set(gone)
            self._not_done = [o for o in self._not_done if o not in vanished]
            self.vanished += len(gone)
            log.warning("%d record(s) the committed map lists as not done are no longer in the log (first %d): "
                        "deleted by retention or DeleteRecords before a worker ran them", len(gone), gone[0])

    def settle(self, offset: int, output: T | None, size: int = 0) -> None:
        """An open record finished; its output (of `size` bytes) is held until a release takes it."""
        record_size = self._open.pop(offset, None)
        if record_size is None:
            raise KeyError(f"offset {offset} is not in flight")
        self._held[offset] = (output, size)
        self.open_bytes += size - record_size

    def is_open(self, offset: int) -> bool:
        """Tracked and not yet settled."""
        return offset in self._open

    # ------------------------------------------------------------------ release

    def release(self, limit_bytes: int, at_once: bool = True, position: int | None = None) -> Release[T] | None:
        """Take every held output that may be produced now; None when the commit would not change.

        `at_once`: also release held outputs above the lowest open offset (recorded in the map); otherwise only the
        settled prefix, as a plain watermark does. `limit_bytes`: the broker's metadata limit; the map sent never
        exceeds it. `position`: the consumer's fetch position; with nothing in the worker, the commit moves there
        (past transaction markers), so an idle worker shows no lag.
        """
        head_count = 0
        while head_count < len(self._not_done) and self._not_done[head_count] in self._held:
            head_count += 1
        # Held offsets are all in _not_done, so the settled prefix is the lowest head_count of them.
        extras = sorted(self._held)[head_count:] if at_once else []
        plan = self._plan(head_count, extras, limit_bytes)
        self.blocked = plan is None
        if plan is None:
            return None
        taken, base, high, incomplete = plan
        outputs = self._take(head_count, taken)
        self.committed = base
        self._high_done = max(self._high_done, high)
        metadata = encode(base, high, incomplete)
        if position is not None and self._idle() and position > self.committed:
            # Nothing open, held or restored: the fetch position lies past transaction markers.
            self.committed = position
            metadata = ""
        self.map_bytes = len(metadata) + 1 if metadata else 0
        if (self.committed, metadata) == self._last_sent and not outputs:
            return None
        self._last_sent = (self.committed, metadata)
        return Release(offset=self.committed, metadata=metadata, outputs=outputs)

    def _plan(self, head_count: int, extras: list[int],
              limit_bytes: int) -> tuple[list[int], int, int, list[int]] | None:
        """The most of `extras` (a prefix: offset order) whose map fits, with its base, top and not-done offsets;
        None when not even the settled prefix fits (a map restored under a larger limit: nothing moves until the
        open records at its bottom finish)."""
        remaining = self._not_done[head_count:]

        def shape(count: int) -> tuple[int, int, list[int]]:
            chosen = set(extras[:count])
            left = [o for o in remaining if o not in chosen] if chosen else remaining
            high = max(self._high_done, extras[count - 1] if count else -1)
            if left:
                base = left[0]
            else:  # everything fetched is done: just past it (never below the committed offset)
                base = max(self.committed, self._last_tracked + 1 if self._last_tracked >= 0 else -1,
                           high + 1 if high >= 0 else -1)
            if high <= base:
                return base, high, []
            return base, high, left[1:bisect.bisect_left(left, high)]

        if payload_fits(*shape(len(extras)), limit_bytes):
            best = len(extras)
        elif not payload_fits(*shape(0), limit_bytes):
            return None
        else:  # the largest prefix that fits; sizes grow with the prefix nearly always, and each candidate is checked
            low, high = 0, len(extras)
            while low < high:
                middle = (low + high + 1) // 2
                if payload_fits(*shape(middle), limit_bytes):
                    low = middle
                else:
                    high = middle - 1
            best = low
        base, high, incomplete = shape(best)
        return extras[:best], base, high, incomplete

    def _take(self, head_count: int, taken: list[int]) -> list[T]:
        """Drop the released offsets from the books; their outputs in offset order."""
        released = self._not_done[:head_count] + taken
        if taken:
            chosen = set(taken)
            self._not_done = [o for o in self._not_done[head_count:] if o not in chosen]
        else:
            del self._not_done[:head_count]
        outputs: list[T] = []
        for offset in released:
            output, size = self._held.pop(offset)
            self.open_bytes -= size
            if output is not None:
                outputs.append(output)
        return outputs

    def _idle(self) -> bool:
        return not self._not_done and not self._held

    # ------------------------------------------------------------------ gauges

    @property
    def open_count(self) -> int:
        """Records the worker holds for this partition: running, waiting to run, or settled and held."""
        return len(self._open) + len(self._held)

    @property
    def held_back(self) -> int:
        """Settled records whose outputs wait (behind an older record, or for room in the map)."""
        return len(self._held)

    @property
    def restoring(self) -> bool:
        """Still fetching the range of a restored map: every record fetched now is skipped or shrinks the map, so
        the map's backpressure must not pause the partition (it would wait for records it stopped fetching)."""
        return self._last_tracked < self._restored_high

    @property
    def pending_restored(self) -> int:
        """Offsets the restored map lists as not done that have not been fetched again yet."""
        return len(self._restored_pending)
