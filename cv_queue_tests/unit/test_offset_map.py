"""The settled-offset map's codec: round trips, the smaller encoding, the size guard, and strict decoding."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cv_queue.kafka.worker.offset_map import (
    HEADER_RESERVE,
    CorruptOffsetMap,
    ForeignOffsetMetadata,
    OffsetMapError,
    SettledAbove,
    decode,
    encode,
    encoded_length,
    payload_fits,
)
from cv_queue.kafka.worker.resume import OffsetMetadataError, restore_tracker
from cv_queue.settings import QueueSettings, WorkerSettings

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=400)


@st.composite
def maps(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    """(base, high, incomplete): a committed offset, the highest done offset, the not-done offsets between."""
    base = draw(st.one_of(st.integers(0, 100), st.integers(0, 2**62)))
    span = draw(st.one_of(st.integers(1, 70), st.integers(1, 5000)))
    high = base + span
    incomplete = draw(st.sets(st.integers(base + 1, high - 1), max_size=300)) if span > 1 else set()
    return base, high, sorted(incomplete)


@DETERMINISTIC
@given(maps())
def test_every_map_round_trips_and_its_length_is_known_before_it_is_built(shape: tuple[int, int, list[int]]) -> None:
    base, high, incomplete = shape
    text = encode(base, high, incomplete)
    assert text.isascii() and "\0" not in text
    assert encoded_length(base, high, incomplete) == len(text)
    assert decode(text, base) == SettledAbove(base=base, high=high, incomplete=tuple(incomplete))


@DETERMINISTIC
@given(maps())
def test_the_smaller_encoding_wins(shape: tuple[int, int, list[int]]) -> None:
    base, high, incomplete = shape
    text = encode(base, high, incomplete)
    kind = text.split(":")[3]
    # The other encoding, built by hand from the same bits, is never shorter.
    span = high - base
    bitset_chars = (4 * ((span + 7) // 8) + 2) // 3
    payload = len(text.split(":")[4])
    assert payload <= bitset_chars
    if kind == "B":
        assert payload == bitset_chars


def test_runs_win_for_a_long_tail_and_bits_for_a_checkerboard() -> None:
    assert encode(100, 100_100, [101]).split(":")[3] == "R"
    assert encode(0, 200, list(range(1, 200, 2))).split(":")[3] == "B"


def test_no_map_for_an_empty_range() -> None:
    assert encode(5, 5, []) == "" and encoded_length(5, 5, []) == 0
    assert decode("", 5) is None and decode(None, 5) is None


@pytest.mark.parametrize("limit", [HEADER_RESERVE + 3, 100, 4096])
def test_the_size_guard_counts_the_header_reserve_and_the_nul(limit: int) -> None:
    def shape(span: int) -> tuple[int, int, list[int]]:
        return 0, span, list(range(1, span, 2))

    assert payload_fits(*shape(1), limit)
    low, high = 1, 100_000  # the largest span that fits, by bisection (sizes grow with the span)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if payload_fits(*shape(middle), limit) else (low, middle - 1)
    span = low
    # The largest map that fits, sent with the longest header it could have, is within the limit with its NUL.
    text = encode(*shape(span))
    assert len(text) + 1 <= limit
    assert len(text.split(":", 4)[4]) + HEADER_RESERVE + 1 <= limit
    assert len(encode(*shape(span + 1)).split(":", 4)[4]) + HEADER_RESERVE + 1 > limit


def test_moving_the_base_up_never_makes_a_fitting_map_stop_fitting() -> None:
    incomplete = list(range(8, 3000, 3))
    limit = HEADER_RESERVE + 1 + (4 * ((3000 - 7 + 7) // 8) + 2) // 3
    assert payload_fits(7, 3000, incomplete, limit)
    for new_base in incomplete[:200]:
        rest = [o for o in incomplete if o > new_base]
        assert payload_fits(new_base, 3000, rest, limit)


@pytest.mark.parametrize("text", ["hello", "{\"owner\": \"other-tool\"}", "CVQ1:0:1:R:AQ", "pc:abc"])
def test_metadata_of_another_tool_is_foreign(text: str) -> None:
    with pytest.raises(ForeignOffsetMetadata):
        decode(text, 0)


@pytest.mark.parametrize(("text", "reason"), [
    ("cvq2:0:1:R:AQ", "unknown version"),
    ("cvq1:0:1:R", "base:span:kind:payload"),
    ("cvq1:7:1:R:AQ", "written for offset 7"),
    ("cvq1:0:0:R:AA", "empty range"),
    ("cvq1:00:1:R:AQ", "plain number"),
    ("cvq1:-1:1:R:AQ", "plain number"),
    ("cvq1:0:1:X:AQ", "unknown encoding"),
    ("cvq1:0:1:R:A", "base64url"),
    ("cvq1:0:1:R:AQ==", "base64url"),
    ("cvq1:0:1:R:AR", "canonical"),
    ("cvq1:0:2:R:AQ", "cover"),
    ("cvq1:0:2:R:AQEA", "alternate"),
    ("cvq1:0:1:R:gA", "cut off"),
    ("cvq1:0:1:R:gQA", "minimally"),
    ("cvq1:0:3:B:Aw", "not done"),
    ("cvq1:0:3:B:Dw", "past the end"),
    ("cvq1:0:9:B:_w", "bitset bytes"),
    ("cvq1:0:2000001:R:AICJegE", "more than"),
])
def test_corrupt_maps_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(CorruptOffsetMap, match=reason):
        decode(text, 0)


@settings(derandomize=True, database=None, deadline=None, max_examples=2000)
@given(st.one_of(st.text(max_size=60), st.text(alphabet="cvq1:0123456789RB-_AQwgZz", max_size=40).map(
    lambda t: "cvq1:" + t)))
def test_fuzzed_metadata_decodes_consistently_or_is_refused(text: str) -> None:
    try:
        settled = decode(text, 0)
    except OffsetMapError:
        return
    if settled is None:
        assert text == ""
        return
    # Whatever decodes is a valid map that encodes back to an equal one.
    assert settled.base == 0 < settled.high
    assert all(0 < o < settled.high for o in settled.incomplete)
    assert decode(encode(settled.base, settled.high, settled.incomplete), 0) == settled


def test_foreign_metadata_stops_the_start_naming_group_and_partition_unless_told_to_ignore() -> None:
    from confluent_kafka import TopicPartition

    settings_ = QueueSettings(namespace="t")
    tp = TopicPartition("t.evaluate-jobs", 3, 42, metadata="written-by-another-tool")
    with pytest.raises(OffsetMetadataError) as refused:
        restore_tracker(tp, settings_)
    message = str(refused.value)
    assert settings_.group_id in message and "t.evaluate-jobs[3]" in message and "FOREIGN_OFFSET_METADATA" in message
    ignoring = settings_.model_copy(update={"worker": WorkerSettings(foreign_offset_metadata="ignore")})
    tracker = restore_tracker(tp, ignoring)
    assert tracker.committed == 42 and tracker.track(43)


def test_a_restored_map_skips_exactly_the_done_offsets() -> None:
    from confluent_kafka import TopicPartition

    tp = TopicPartition("jobs", 0, 10, metadata=encode(10, 15, [12, 14]))
    tracker = restore_tracker(tp, QueueSettings())
    assert [o for o in range(10, 18) if not tracker.track(o)] == [11, 13, 15]


def test_a_map_past_the_largest_offset_or_the_log_end_is_refused() -> None:
    from confluent_kafka import TopicPartition

    with pytest.raises(CorruptOffsetMap, match="largest Kafka offset"):
        decode(f"cvq1:0:{2**63}:R:AQ", 0)
    tp = TopicPartition("jobs", 0, 10, metadata=encode(10, 500, []))
    with pytest.raises(OffsetMetadataError, match="partition ends at 300"):
        restore_tracker(tp, QueueSettings(), log_end=300)
    assert not restore_tracker(tp, QueueSettings(), log_end=501).track(400)


def test_restored_offsets_that_left_the_log_do_not_pin_the_committed_offset() -> None:
    from confluent_kafka import TopicPartition

    tp = TopicPartition("jobs", 0, 10, metadata=encode(10, 50, [20, 30]))
    tracker = restore_tracker(tp, QueueSettings())
    # Retention deleted everything below 25: the consumer resets past 10 and 20, which can never be run now.
    assert tracker.track(25) is False and tracker.vanished == 2
    assert tracker.track(30) is True
    tracker.settle(30, "out-30")
    release = tracker.release(4096, position=31)
    assert release is not None and release.offset == 51 and release.outputs == ["out-30"]
