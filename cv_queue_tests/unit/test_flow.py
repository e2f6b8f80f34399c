"""Flow control alone: which partitions pause, and that each one resumes."""

from cv_queue.kafka.worker.flow import FlowControl
from cv_queue.kafka.worker.inflight import PartitionTracker
from cv_queue.kafka.worker.offset_map import SettledAbove
from cv_queue.settings import QueueSettings, RetrySettings, WorkerSettings

SETTINGS = QueueSettings(worker=WorkerSettings(max_buffered=100, max_partition_bytes=1_048_576,
                                               max_partition_records=50),
                         retry=RetrySettings(max_waiting_per_partition=10))
SOURCES = [("jobs", 0), ("jobs", 1), ("retry", 0), ("retry", 1)]
LIMIT = 4096


def _trackers() -> dict[tuple[str, int], PartitionTracker]:
    return {tp: PartitionTracker(0) for tp in SOURCES}


def test_a_partition_over_its_byte_cap_pauses_alone_and_resumes_at_half() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    trackers = _trackers()
    hung = trackers[("jobs", 0)]
    hung.track(0, 10)  # the hung job, never settled
    for offset in range(1, 11):
        hung.track(offset, 120_000)
        hung.settle(offset, object(), 120_000)  # done, but held behind offset 0 (the in_order release)
    assert flow.wanted(0, trackers, {}) == {("jobs", 0)}
    hung.settle(0, None, 0)
    hung.release(LIMIT, at_once=False)
    assert flow.wanted(0, trackers, {}) == set(), "released: the partition must resume"


def test_at_once_release_frees_the_bytes_behind_a_hung_job() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    trackers = _trackers()
    hung = trackers[("jobs", 0)]
    hung.track(0, 10)
    for offset in range(1, 11):
        hung.track(offset, 120_000)
        hung.settle(offset, object(), 120_000)
    release = hung.release(LIMIT)
    assert release is not None and release.offset == 0 and len(release.outputs) == 10
    assert hung.open_bytes == 10 and flow.wanted(0, trackers, {}) == set()


def test_a_map_at_three_quarters_of_the_limit_pauses_its_partition_until_it_shrinks() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    flow.metadata_limit = 400
    trackers = _trackers()
    tracker = trackers[("jobs", 1)]
    for offset in range(2000):
        tracker.track(offset)
    for offset in range(1, 2000, 2):  # every other job done: a long alternating map
        tracker.settle(offset, None)
    tracker.release(flow.metadata_limit)
    assert 0.75 * flow.metadata_limit <= tracker.map_bytes <= flow.metadata_limit, tracker.map_bytes
    assert flow.wanted(0, trackers, {}) == {("jobs", 1)}
    for offset in range(0, 2000, 2):
        tracker.settle(offset, None)
    tracker.release(flow.metadata_limit)
    assert tracker.map_bytes == 0 and flow.wanted(0, trackers, {}) == set()


def test_a_restored_map_does_not_pause_the_partition_that_must_fetch_its_way_through_it() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    flow.metadata_limit = 400
    restored = SettledAbove(base=0, high=2000, incomplete=tuple(range(2, 2000, 2)))
    trackers = _trackers()
    tracker = trackers[("jobs", 0)] = PartitionTracker(0, restored)
    assert tracker.map_bytes >= 0.75 * flow.metadata_limit and tracker.restoring
    assert flow.wanted(0, trackers, {}) == set()
    for offset in range(2001):
        tracker.track(offset)
    assert not tracker.restoring and flow.wanted(0, trackers, {}) == {("jobs", 0)}


def test_hysteresis_between_half_and_the_cap() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    trackers = _trackers()
    tracker = trackers[("jobs", 1)]
    for offset in range(50):
        tracker.track(offset)
    assert ("jobs", 1) in flow.wanted(0, trackers, {})
    for offset in range(20):
        tracker.settle(offset, None)
    tracker.release(LIMIT)  # 30 open: below the cap, above half
    assert ("jobs", 1) in flow.wanted(0, trackers, {})
    for offset in range(20, 30):
        tracker.settle(offset, None)
    tracker.release(LIMIT)  # 20 open
    assert ("jobs", 1) not in flow.wanted(0, trackers, {})


def test_waiting_retries_pause_only_their_retry_partition() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    assert flow.wanted(0, _trackers(), {1: 10}) == {("retry", 1)}
    assert flow.wanted(0, _trackers(), {1: 4}) == set()


def test_handlers_falling_behind_pause_everything_until_half_are_started() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    assert flow.wanted(100, _trackers(), {}) == set(SOURCES)
    assert flow.wanted(60, _trackers(), {}) == set(SOURCES)
    assert flow.wanted(50, _trackers(), {}) == set()


def test_a_map_restored_under_a_larger_limit_never_stalls_its_partition() -> None:
    """Run 1 wrote a map under a 16 KiB limit; run 2 gets 4 KiB. Nothing can be released until the map's open
    offsets finish, so the partition must go on fetching through the restored range (held outputs and all), and
    everything comes out once they do."""
    import random

    from cv_queue.kafka.worker.offset_map import decode

    rng = random.Random(7)
    span = 60_000
    running = set(rng.sample(range(1, span), 3000)) | {0}
    first = PartitionTracker(-1)
    for offset in range(span):
        first.track(offset, 10)
        if offset not in running:
            first.settle(offset, offset, 10)
    written = first.release(16_384, True, span)
    assert written is not None and len(written.metadata) + 1 > 4096
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    flow.metadata_limit = 4096
    trackers = _trackers()
    second = trackers[("jobs", 0)] = PartitionTracker(written.offset, decode(written.metadata, written.offset))
    released: list[int] = []
    for offset in range(written.offset, span):
        assert ("jobs", 0) not in flow.wanted(0, trackers, {}), f"paused at {offset} with the map's offsets unread"
        if second.track(offset, 20_000):
            second.settle(offset, offset, 20_000)
        if offset % 200 == 0 and (release := second.release(flow.metadata_limit, True, offset + 1)) is not None:
            released += release.outputs
    if (release := second.release(flow.metadata_limit, True, span)) is not None:
        released += release.outputs
    assert sorted(released) == sorted(running) and second.committed == span


def test_a_full_buffer_pauses_every_bulk_partition_but_not_the_interactive_lane() -> None:
    sources = [*SOURCES, ("interactive", 0), ("interactive", 1)]
    flow = FlowControl(SETTINGS, sources, "retry", "interactive")
    trackers = {tp: PartitionTracker(0) for tp in sources}
    bulk = {tp for tp in sources if tp[0] != "interactive"}
    assert flow.wanted(100, trackers, {}) == bulk  # jobs waiting for handlers (or for budget)
    assert flow.wanted(60, trackers, {}) == bulk  # hysteresis: still above half
    assert flow.wanted(50, trackers, {}) == set()
    # The lane's own limits still bound it.
    lane = trackers[("interactive", 1)]
    for offset in range(SETTINGS.worker.max_partition_records):
        lane.track(offset, 10)
    assert flow.wanted(0, trackers, {}) == {("interactive", 1)}
