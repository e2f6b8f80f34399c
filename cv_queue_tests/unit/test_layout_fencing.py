"""Fencing across layouts: every slot any earlier layout could have run over a worker's partitions is fenced."""

from hypothesis import given
from hypothesis import strategies as st

from cv_queue.kafka.fleet.fencing import overlapping_slots
from cv_queue.kafka.fleet.layout import Layout
from cv_queue.settings import QueueSettings, Slot, TopicSettings


def _settings(partitions: int, per_worker: int) -> QueueSettings:
    return QueueSettings(topics=TopicSettings(partitions=partitions, partitions_per_worker=per_worker))


@st.composite
def grown_layouts(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """An earlier layout (old_partitions, old_width) and a current one (partitions >= old_partitions, width)."""
    old_width = draw(st.integers(1, 8))
    old_partitions = old_width * draw(st.integers(1, 8))
    width = draw(st.integers(1, 8))
    least = max(1, -(-old_partitions // width))  # the topic only grows
    partitions = width * draw(st.integers(least, least + 4))
    return old_partitions, old_width, partitions, width


@given(grown_layouts(), st.data(), st.booleans())
def test_every_overlapping_slot_of_an_earlier_layout_is_fenced(layout: tuple[int, int, int, int], data: st.DataObject,
                                                               history_known: bool):
    old_partitions, old_width, partitions, width = layout
    settings = _settings(partitions, width)
    mine = data.draw(st.sampled_from(settings.slots()))
    earlier = [Layout(partitions=old_partitions, partitions_per_worker=old_width)] if history_known else None
    fenced = set(overlapping_slots(settings, mine, earlier))
    for old in _settings(old_partitions, old_width).slots():
        if set(old.partitions) & set(mine.partitions) and old != mine:
            assert old in fenced, f"{old.name} (of {old_partitions} in {old_width}s) not fenced by {mine.name}"
    assert mine not in fenced
    assert all(max(s.partitions) < partitions and set(s.partitions) & set(mine.partitions) for s in fenced)


def test_twelve_in_threes_grown_to_sixteen_in_fours():
    # The case a divisors-only rule missed: 3 does not divide 16, yet 0-2 may still be running.
    for earlier in (None, [Layout(partitions=12, partitions_per_worker=3)]):
        fenced = overlapping_slots(_settings(16, 4), Slot.parse("0-3"), earlier)
        assert Slot.parse("0-2") in fenced and Slot.parse("3-5") in fenced


def test_a_known_history_fences_far_fewer_slots_than_every_width():
    settings = _settings(64, 1)
    history = [Layout(partitions=8, partitions_per_worker=2), Layout(partitions=32, partitions_per_worker=2)]
    known = overlapping_slots(settings, Slot.parse("5"), history)
    assert set(known) == {Slot.parse("4-5")} | {s for s in overlapping_slots(settings, Slot.parse("5"), [])}
    assert len(known) < len(overlapping_slots(settings, Slot.parse("5"))) / 5
