"""Outputs released at once, crashes, restarts from the committed map: a hypothesis state machine over the real
tracker, scheduler and codec, with a model broker that applies each commit atomically (or not at all).

One partition's log (records at increasing offsets, with gaps where transaction markers sit, under a few keys) is
fetched, run in any order the keyed scheduler allows, settled, and committed at random moments under a metadata
limit that is sometimes tight. At any step the worker may crash, before or in the middle of a commit (an aborted
transaction: nothing of it lands); it then restarts from what the broker holds: the committed offset and its map.

What must hold:
- every record's output lands on the broker exactly once, across every crash (checked after a final drain);
- a job whose output is committed never runs again (a restarted worker skips it);
- per key, outputs land in offset order;
- no metadata sent ever exceeds the limit, and each one decodes to the offsets whose outputs the broker holds.
"""

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cv_queue.kafka.worker.inflight import KeyedScheduler
from cv_queue.kafka.worker.offset_map import HEADER_RESERVE, decode
from cv_queue.kafka.worker.tracker import PartitionTracker

KEYS = ("k0", "k1", "k2", "k3", "k4", "k5")
# Tight limits hold outputs back for want of room; 4096 is Kafka's default.
LIMITS = st.sampled_from([HEADER_RESERVE + 4, HEADER_RESERVE + 10, 4096, 4096])
Output = tuple[str, int]
STATS: Counter[str] = Counter()  # how often the interesting paths ran (a test below insists they do)


class Broker:
    """What Kafka keeps of the worker group and the results topic: applied whole, per transaction."""

    def __init__(self) -> None:
        self.committed = -1
        self.metadata = ""
        self.outputs: list[Output] = []

    def done(self) -> set[int]:
        return {offset for _, offset in self.outputs}


class ReleaseMachine(RuleBasedStateMachine):
    @initialize(gaps=st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=40),
                keys=st.data(), limit=LIMITS, max_in_flight=st.integers(min_value=1, max_value=6))
    def start(self, gaps: list[int], keys: st.DataObject, limit: int, max_in_flight: int) -> None:
        offset, self.log = 0, []
        for gap in gaps:
            offset += gap
            self.log.append((offset, keys.draw(st.sampled_from(KEYS), label="key")))
            offset += 1
        self.end = offset
        self.limit = limit
        self.max_in_flight = max_in_flight
        self.broker = Broker()
        self.calls: Counter[int] = Counter()
        self.crashes = 0
        self._restart()

    def _restart(self) -> None:
        """A new worker process: everything in memory is gone; it resumes from the broker."""
        settled = decode(self.broker.metadata, self.broker.committed)
        STATS["restarts from a map"] += settled is not None
        if settled is not None:  # what the map says is done is exactly what the broker holds outputs for
            in_range = {o for o, _ in self.log if self.broker.committed < o <= settled.high}
            assert {o for o in in_range if settled.is_done(o)} == {o for o in in_range if o in self.broker.done()}
        self.tracker: PartitionTracker[Output] = PartitionTracker(self.broker.committed, settled)
        self.scheduler: KeyedScheduler[int] = KeyedScheduler(self.max_in_flight)
        self.running: dict[str, int] = {}
        start = max(self.broker.committed, 0)
        self.next_index = next((i for i, (o, _) in enumerate(self.log) if o >= start), len(self.log))

    def _position(self) -> int:
        return self.log[self.next_index][0] if self.next_index < len(self.log) else self.end

    # ------------------------------------------------------------------ the worker's steps

    @precondition(lambda self: self.next_index < len(self.log))
    @rule(count=st.integers(min_value=1, max_value=5))
    def fetch(self, count: int) -> None:
        for offset, key in self.log[self.next_index:self.next_index + count]:
            self.next_index += 1
            if self.tracker.track(offset):
                self.scheduler.offer(key, offset)
            else:
                STATS["skipped as done"] += 1
                assert offset in self.broker.done(), f"offset {offset} skipped, but its output was never committed"
        self.take()

    def take(self) -> None:
        """Start every job the scheduler hands out (up to max_in_flight, one per key): after each fetch and finish,
        as the worker's loop does."""
        while (taken := self.scheduler.take()) is not None:
            key, offset = taken
            assert offset not in self.broker.done(), f"offset {offset} runs again after its output was committed"
            self.calls[offset] += 1
            self.running[key] = offset

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data(), then_commit=st.booleans())
    def finish(self, data: st.DataObject, then_commit: bool) -> None:
        keys = data.draw(st.lists(st.sampled_from(sorted(self.running)), min_size=1, unique=True), label="finishing")
        for key in keys:
            self._settle_key(key)
        self.take()
        if then_commit:  # the worker commits every 50 ms: most finishes are followed by one
            self.commit()

    @rule()
    def commit(self) -> None:
        release = self.tracker.release(self.limit, at_once=True, position=self._position())
        if release is None:
            return
        assert len(release.metadata) + 1 <= self.limit, (len(release.metadata), self.limit)
        assert release.offset >= self.broker.committed  # the committed offset never moves back
        # The transaction: outputs and offset with its map, together.
        self.broker.outputs.extend(release.outputs)
        self.broker.committed, self.broker.metadata = release.offset, release.metadata
        STATS["commits with a map"] += bool(release.metadata)

    @rule(in_a_commit=st.booleans())
    def crash(self, in_a_commit: bool) -> None:
        """The process dies; `in_a_commit`: after a transaction took its outputs, before it committed (the broker
        aborts it, so nothing of it lands)."""
        if in_a_commit:
            self.tracker.release(self.limit, at_once=True, position=self._position())
        self.crashes += 1
        self._restart()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def each_output_once_and_in_key_order(self) -> None:
        offsets = [offset for _, offset in self.broker.outputs]
        assert len(offsets) == len(set(offsets)), f"an output was committed twice: {sorted(offsets)}"
        for key in KEYS:
            mine = [offset for k, offset in self.broker.outputs if k == key]
            assert mine == sorted(mine), f"key {key}: outputs out of offset order {mine}"

    def teardown(self) -> None:
        """Run everything left to the end: then every record's output is on the broker exactly once."""
        if not hasattr(self, "log"):
            return
        for _ in range(len(self.log) * 4 + 10):
            while self.next_index < len(self.log):
                self.fetch(5)
            self.take()
            while self.running:
                for key in sorted(self.running):
                    self._settle_key(key)
                self.take()
            self.commit()
            if self.tracker.open_count == 0 and self.next_index == len(self.log):
                break
        self.commit()
        per_offset = Counter(offset for _, offset in self.broker.outputs)
        assert set(per_offset) == {o for o, _ in self.log}, "outputs lost"
        assert max(per_offset.values()) == 1
        assert self.broker.metadata == "" and self.broker.committed == self.end

    def _settle_key(self, key: str) -> None:
        offset = self.running.pop(key)
        self.tracker.settle(offset, (key, offset))
        self.scheduler.done(key)


ReleaseMachine.TestCase.settings = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                                            stateful_step_count=80)
test_release_at_once_with_crashes_is_exactly_once = ReleaseMachine.TestCase


class _CountedRun(ReleaseMachine.TestCase):  # type: ignore[name-defined,misc]
    settings = settings(derandomize=True, database=None, deadline=None, max_examples=150, stateful_step_count=80)


def test_the_machine_reaches_restarts_from_a_map() -> None:
    """The machine above proves nothing about restarts unless it makes them: run a third of it and count."""
    STATS.clear()
    _CountedRun("runTest").runTest()
    # Floors, not the counts of one run: a derandomized run still made a quarter fewer restarts on a loaded CI
    # worker than here.
    assert STATS["commits with a map"] > 8 and STATS["restarts from a map"] > 20 and STATS["skipped as done"] > 12, \
        STATS
