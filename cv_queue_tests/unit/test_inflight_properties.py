"""Properties of the in-flight structures under random interleavings (hypothesis, deterministic).

The tracker here releases in order (worker.release_outputs = in_order); the at-once release with its offset map,
crashes and restarts is test_offset_map_machine.py.

Each state machine drives the real structure and a plain model side by side; after every step the two
must agree and the invariants exactly-once output rests on must hold:
- the watermark never passes an offset that is tracked but not settled;
- outputs come out in offset order (so in offset order per key), each exactly once;
- one key never runs twice at once, its items run in offer order, and at most max_in_flight run;
- nothing runnable is left waiting while a slot is free (no lost wake-up).
"""

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cv_queue.kafka.worker.inflight import DueQueue, KeyedScheduler, PartitionTracker

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200,
                         stateful_step_count=60)
KEYS = st.sampled_from(["k0", "k1", "k2", "k3"])  # few keys, so keys collide and queue behind each other
LIMIT = 4096


def release_in_order(tracker: PartitionTracker) -> tuple[int, list]:
    release = tracker.release(LIMIT, at_once=False)
    assert release is None or release.metadata == ""  # in order, nothing above the watermark is ever done
    return (tracker.committed, []) if release is None else (release.offset, release.outputs)


class TrackerMachine(RuleBasedStateMachine):
    """One partition: offsets tracked in increasing order (with gaps, as transaction markers leave),
    settled in any order, released at any time."""

    @initialize(committed=st.integers(min_value=-1, max_value=1_000))
    def start(self, committed: int) -> None:
        self.tracker: PartitionTracker[tuple[str, int]] = PartitionTracker(committed)
        self.committed = committed
        self.next_offset = max(committed, 0)
        self.open: deque[int] = deque()  # tracked, not yet released, in offset order
        self.settled: dict[int, tuple[str, int] | None] = {}  # offset -> its output (None: no output)
        self.released: list[tuple[str, int]] = []
        self.last_tracked: int | None = None

    @rule(gap=st.integers(min_value=0, max_value=3))
    def track(self, gap: int) -> None:
        offset = self.next_offset + gap
        self.tracker.track(offset)
        self.open.append(offset)
        self.next_offset = offset + 1
        self.last_tracked = offset

    @precondition(lambda self: len(self.settled) < len(self.open))
    @rule(data=st.data(), with_output=st.booleans())
    def settle(self, data: st.DataObject, with_output: bool) -> None:
        unsettled = [o for o in self.open if o not in self.settled]
        offset = data.draw(st.sampled_from(unsettled), label="offset")
        output = ("out", offset) if with_output else None
        self.tracker.settle(offset, output)
        self.settled[offset] = output

    @rule()
    def release(self) -> None:
        committed, outputs = release_in_order(self.tracker)
        expected: list[tuple[str, int]] = []
        while self.open and self.open[0] in self.settled:  # the model: the settled prefix, nothing more
            offset = self.open.popleft()
            if (out := self.settled.pop(offset)) is not None:
                expected.append(out)
        # The lowest offset still open, or just past everything tracked (gaps are transaction markers).
        if self.open:
            self.committed = self.open[0]
        elif self.last_tracked is not None:
            self.committed = max(self.committed, self.last_tracked + 1)
        assert (committed, outputs) == (self.committed, expected)
        assert all(offset < committed for _, offset in outputs)  # an output leaves only below the watermark
        self.released += outputs

    @precondition(lambda self: bool(self.open))
    @rule()
    def track_out_of_order_is_refused(self) -> None:
        with pytest.raises(ValueError):
            self.tracker.track(self.open[-1])

    @invariant()
    def watermark_never_passes_an_unsettled_offset(self) -> None:
        unsettled = [o for o in self.open if o not in self.settled]
        assert all(self.tracker.committed <= o for o in unsettled)

    @invariant()
    def outputs_in_offset_order_and_never_twice(self) -> None:
        offsets = [offset for _, offset in self.released]
        assert offsets == sorted(set(offsets))  # strictly increasing: ordered, and no output twice

    @invariant()
    def counters_match_the_model(self) -> None:
        assert self.tracker.committed == self.committed
        assert self.tracker.open_count == len(self.open)
        assert self.tracker.held_back == len(self.settled)


class SchedulerMachine(RuleBasedStateMachine):
    """Items offered under a few keys, urgent (the interactive lane) or not, taken and finished in any interleaving:
    per-key offer order always holds, and no item is handed out while an urgent one could run instead."""

    @initialize(max_in_flight=st.integers(min_value=1, max_value=4))
    def start(self, max_in_flight: int) -> None:
        self.scheduler: KeyedScheduler[int] = KeyedScheduler(max_in_flight)
        self.max_in_flight = max_in_flight
        self.waiting: dict[str, deque[int]] = {}  # key -> items not yet handed out, in offer order
        self.running: dict[str, int] = {}  # key -> the item running under it
        self.urgent: set[int] = set()
        self.sequence = 0

    @rule(key=KEYS, urgent=st.booleans())
    def offer(self, key: str, urgent: bool) -> None:
        self.sequence += 1
        self.scheduler.offer(key, self.sequence, urgent)
        self.waiting.setdefault(key, deque()).append(self.sequence)
        if urgent:
            self.urgent.add(self.sequence)

    @rule()
    def take(self) -> None:
        taken = self.scheduler.take()
        runnable = [k for k, items in self.waiting.items() if items and k not in self.running]
        if taken is None:
            # Nothing handed out only when no slot is free or every waiting item's key is busy.
            assert len(self.running) >= self.max_in_flight or not runnable
            return
        key, item = taken
        assert key not in self.running, f"{key} handed out while {self.running.get(key)} runs"
        assert self.waiting[key] and self.waiting[key][0] == item, "items of a key left out of offer order"
        if item not in self.urgent:
            urgent_runnable = [k for k in runnable if self.waiting[k][0] in self.urgent]
            assert not urgent_runnable, f"bulk item {item} handed out before the urgent heads of {urgent_runnable}"
        self.waiting[key].popleft()
        self.running[key] = item

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.running)), label="key")
        self.scheduler.done(key)
        del self.running[key]

    @invariant()
    def bounded_and_counted(self) -> None:
        assert self.scheduler.in_flight == len(self.running) <= self.max_in_flight
        assert self.scheduler.buffered == sum(len(items) for items in self.waiting.values())
        peeked = self.scheduler.peek()
        if peeked is not None:  # peek is what take would hand out
            assert self.waiting[peeked[0]][0] == peeked[1]


class PipelineMachine(RuleBasedStateMachine):
    """The worker's use of both: a polled record is tracked and offered under its key; a finished one
    settles its offset and frees its key. Released outputs must come out in offset order per key."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker: PartitionTracker[tuple[str, int]] = PartitionTracker(0)
        self.scheduler: KeyedScheduler[int] = KeyedScheduler(max_in_flight=3)
        self.next_offset = 0
        self.key_of: dict[int, str] = {}
        self.running: dict[str, int] = {}
        self.unsettled: set[int] = set()
        self.released: dict[str, list[int]] = {}

    @rule(key=KEYS, gap=st.integers(min_value=0, max_value=2))
    def poll(self, key: str, gap: int) -> None:
        offset = self.next_offset + gap
        self.next_offset = offset + 1
        self.tracker.track(offset)
        self.scheduler.offer(key, offset)
        self.key_of[offset] = key
        self.unsettled.add(offset)

    @rule()
    def take(self) -> None:
        if (taken := self.scheduler.take()) is not None:
            key, offset = taken
            assert key not in self.running
            self.running[key] = offset

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.running)), label="key")
        offset = self.running.pop(key)
        self.tracker.settle(offset, (key, offset))
        self.unsettled.discard(offset)
        self.scheduler.done(key)

    @rule()
    def release(self) -> None:
        committed, outputs = release_in_order(self.tracker)
        assert all(committed <= o for o in self.unsettled)
        for key, offset in outputs:
            assert self.key_of[offset] == key
            self.released.setdefault(key, []).append(offset)

    @invariant()
    def per_key_offset_order_and_once(self) -> None:
        for offsets in self.released.values():
            assert offsets == sorted(set(offsets))


TrackerMachine.TestCase.settings = DETERMINISTIC
SchedulerMachine.TestCase.settings = DETERMINISTIC
PipelineMachine.TestCase.settings = DETERMINISTIC
test_tracker = TrackerMachine.TestCase
test_scheduler = SchedulerMachine.TestCase
test_pipeline = PipelineMachine.TestCase


@DETERMINISTIC
@given(dues=st.lists(st.integers(min_value=0, max_value=50), max_size=40),
       clock=st.lists(st.integers(min_value=0, max_value=60), max_size=10))
def test_due_queue_pops_each_item_once_never_early_in_due_order(dues: list[int], clock: list[int]) -> None:
    queue: DueQueue[int] = DueQueue()
    for item, due_ms in enumerate(dues):
        queue.push(due_ms, item)
    popped: list[int] = []
    for now_ms in [*sorted(clock), 60]:
        batch = queue.pop_due(now_ms)
        popped += batch
        assert all(dues[i] <= now_ms for i in batch)  # never before its due time
        left = [dues[i] for i in range(len(dues)) if i not in popped]
        assert all(due > now_ms for due in left)  # nothing due is left behind
        assert queue.next_due_ms() == min(left, default=None)
    # Everything exactly once, by due time, ties in push order.
    assert popped == sorted(range(len(dues)), key=lambda i: (dues[i], i))
    assert len(queue) == 0
