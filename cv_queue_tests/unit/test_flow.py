"""Flow control alone: which partitions pause, and that each one resumes."""

from cv_queue.kafka.flow import FlowControl
from cv_queue.kafka.inflight import PartitionTracker
from cv_queue.settings import QueueSettings, RetrySettings, WorkerSettings

SETTINGS = QueueSettings(worker=WorkerSettings(max_buffered=100, max_partition_bytes=1_048_576,
                                               max_partition_records=50),
                         retry=RetrySettings(max_waiting_per_partition=10))
SOURCES = [("jobs", 0), ("jobs", 1), ("retry", 0), ("retry", 1)]


def _trackers() -> dict[tuple[str, int], PartitionTracker]:
    return {tp: PartitionTracker(0) for tp in SOURCES}


def test_a_partition_over_its_byte_cap_pauses_alone_and_resumes_at_half() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    trackers = _trackers()
    hung = trackers[("jobs", 0)]
    hung.track(0, 10)  # the hung job, never settled
    for offset in range(1, 11):
        hung.track(offset, 120_000)
        hung.settle(offset, object(), 120_000)  # done, but held behind offset 0
    assert flow.wanted(0, trackers, {}) == {("jobs", 0)}
    hung.settle(0, None, 0)
    hung.release()
    assert flow.wanted(0, trackers, {}) == set(), "released: the partition must resume"


def test_hysteresis_between_half_and_the_cap() -> None:
    flow = FlowControl(SETTINGS, SOURCES, "retry")
    trackers = _trackers()
    tracker = trackers[("jobs", 1)]
    for offset in range(50):
        tracker.track(offset)
    assert ("jobs", 1) in flow.wanted(0, trackers, {})
    for offset in range(20):
        tracker.settle(offset, None)
    tracker.release()  # 30 open: below the cap, above half
    assert ("jobs", 1) in flow.wanted(0, trackers, {})
    for offset in range(20, 30):
        tracker.settle(offset, None)
    tracker.release()  # 20 open
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
