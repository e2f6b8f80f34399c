"""The watermark and the keyed scheduler: the rules exactly-once output and per-key order rest on."""

import random

import pytest

from cv_queue.kafka.worker.inflight import DueQueue, KeyedScheduler, PartitionTracker
from cv_queue.kafka.worker.offset_map import decode

LIMIT = 4096


def _in_order(tracker: PartitionTracker) -> tuple[int, list]:
    release = tracker.release(LIMIT, at_once=False)
    return (tracker.committed, []) if release is None else (release.offset, release.outputs)


def test_in_order_the_watermark_moves_only_over_a_contiguous_settled_run():
    tracker: PartitionTracker[str] = PartitionTracker(committed=10)
    for offset in (10, 11, 12, 14):  # 13 was a transaction marker: offsets may have gaps
        tracker.track(offset)
    tracker.settle(12, "out-12")
    tracker.settle(14, "out-14")
    assert _in_order(tracker) == (10, [])  # 10 and 11 still run: nothing above them is released
    assert tracker.held_back == 2
    tracker.settle(10, "out-10")
    assert _in_order(tracker) == (11, ["out-10"])
    tracker.settle(11, None)  # settled with no output
    assert _in_order(tracker) == (15, ["out-12", "out-14"])
    assert tracker.open_count == 0 and tracker.held_back == 0


def test_at_once_outputs_leave_at_once_and_the_map_records_them():
    tracker: PartitionTracker[str] = PartitionTracker(committed=10)
    for offset in (10, 11, 12, 14, 15):  # 13 was a transaction marker
        tracker.track(offset)
    tracker.settle(12, "out-12")
    tracker.settle(15, "out-15")
    release = tracker.release(LIMIT)
    assert release is not None and release.offset == 10 and release.outputs == ["out-12", "out-15"]
    settled = decode(release.metadata, 10)
    assert settled is not None and [o for o in range(10, 17) if settled.is_done(o)] == [12, 13, 15]
    assert tracker.release(LIMIT) is None  # nothing changed: no commit
    tracker.settle(10, "out-10")
    release = tracker.release(LIMIT)
    assert release is not None and (release.offset, release.outputs) == (11, ["out-10"])
    assert decode(release.metadata, 11).incomplete == (14,)
    tracker.settle(11, None)
    tracker.settle(14, "out-14")
    release = tracker.release(LIMIT)
    assert release is not None and (release.offset, release.metadata, release.outputs) == (16, "", ["out-14"])


def test_the_map_never_exceeds_the_limit_and_what_does_not_fit_waits():
    tracker: PartitionTracker[int] = PartitionTracker(committed=0)
    for offset in range(400):
        tracker.track(offset)
    for offset in range(1, 400, 2):
        tracker.settle(offset, offset)
    limit = 80  # room for a few runs only
    release = tracker.release(limit)
    assert release is not None and len(release.metadata) + 1 <= limit
    assert 0 < len(release.outputs) < 200 and release.outputs == sorted(release.outputs)
    assert tracker.held_back == 200 - len(release.outputs)
    for offset in range(0, 400, 2):  # the open ones finish: the watermark takes everything that waited
        tracker.settle(offset, offset)
    last = tracker.release(limit)
    assert last is not None and last.offset == 400 and last.metadata == ""
    assert sorted(release.outputs + last.outputs) == list(range(400))


def test_tracker_refuses_out_of_order_and_unknown_offsets():
    tracker: PartitionTracker[str] = PartitionTracker(committed=0)
    tracker.track(5)
    with pytest.raises(ValueError):
        tracker.track(5)
    with pytest.raises(KeyError):
        tracker.settle(6, "x")


def test_random_completion_orders_release_everything_in_offset_order():
    rng = random.Random(7)
    for _ in range(50):
        tracker: PartitionTracker[int] = PartitionTracker(committed=0)
        offsets = list(range(100))
        for o in offsets:
            tracker.track(o)
        released: list[int] = []
        order = offsets[:]
        rng.shuffle(order)
        for o in order:
            tracker.settle(o, o)
            committed, outs = _in_order(tracker)
            released += outs
            assert committed == (released[-1] + 1 if released else 0)
            assert all(x < committed for x in released)
        assert released == offsets


def test_same_key_never_runs_twice_at_once_and_keeps_order():
    sched: KeyedScheduler[str] = KeyedScheduler(max_in_flight=10)
    for item in ("a1", "b1", "a2", "a3", "c1"):
        sched.offer(item[0], item)
    running = [sched.take() for _ in range(5)]
    assert [r for r in running if r] == [("a", "a1"), ("b", "b1"), ("c", "c1")]  # a2, a3 wait behind a1
    assert sched.buffered == 2
    sched.done("a")
    assert sched.take() == ("a", "a2")
    assert sched.take() is None
    sched.done("a")
    assert sched.take() == ("a", "a3")


def test_concurrency_is_bounded_and_a_busy_key_blocks_no_other():
    sched: KeyedScheduler[int] = KeyedScheduler(max_in_flight=3)
    sched.offer("poison", 0)
    for i in range(1, 10):
        sched.offer(f"k{i}", i)
    taken = [sched.take() for _ in range(5)]
    assert sum(t is not None for t in taken) == 3 and sched.in_flight == 3
    sched.done("k1")
    sched.done("k2")  # "poison" keeps running; other keys still flow past it
    assert sched.take() == ("k3", 3) and sched.take() == ("k4", 4) and sched.take() is None


def test_due_queue_pops_in_due_order_only_when_due():
    due: DueQueue[str] = DueQueue()
    due.push(300, "c")
    due.push(100, "a")
    due.push(200, "b")
    assert due.pop_due(50) == []
    assert due.next_due_ms() == 100
    assert due.pop_due(250) == ["a", "b"]
    assert len(due) == 1
