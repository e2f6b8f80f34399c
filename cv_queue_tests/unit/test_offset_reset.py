"""A committed offset outside its partition's log, per worker.offset_reset (resume.py): refused with everything an
operator needs by default; reset to the log's start or end otherwise, so that the first commit moves the group's
offset back inside the log. The real-process tests are in cv_queue_tests/kafka/test_recreated_topic.py."""

import pytest
from confluent_kafka import TopicPartition

from cv_queue.kafka.client.failures import EXIT_TOPIC_STATE, FailureKind, TopicStateError, kind_of_exception
from cv_queue.kafka.fleet.join import WorkerStartError
from cv_queue.kafka.wire.records import SourceRecord
from cv_queue.kafka.worker.offset_map import encode
from cv_queue.kafka.worker.resume import OffsetOutOfRangeError, reset_out_of_range, track_fetched
from cv_queue.kafka.worker.tracker import PartitionTracker
from cv_queue.settings import QueueSettings, WorkerSettings

TOPIC = "ns.evaluate-jobs"


def _settings(policy: str) -> QueueSettings:
    return QueueSettings(namespace="ns", worker=WorkerSettings(offset_reset=policy))


def test_by_default_a_committed_offset_above_the_log_end_stops_the_start_naming_everything():
    with pytest.raises(OffsetOutOfRangeError) as refused:
        reset_out_of_range(TopicPartition(TOPIC, 1, 57), 0, 3, _settings("fail"))
    message = str(refused.value)
    assert "'ns.cv-queue-workers' committed offset 57 on ns.evaluate-jobs[1]" in message
    assert "from offset 0 (log start) to 3 (log end)" in message and "deleted and recreated" in message
    assert "CVQ_WORKER__OFFSET_RESET=earliest" in message and "CVQ_WORKER__OFFSET_RESET=latest" in message
    assert isinstance(refused.value, WorkerStartError) and refused.value.exit_code == EXIT_TOPIC_STATE
    assert kind_of_exception(refused.value) == FailureKind.TOPIC_STATE


def test_by_default_a_committed_offset_below_the_log_start_stops_the_start_too():
    with pytest.raises(OffsetOutOfRangeError, match="retention or DeleteRecords removed offsets 5-19"):
        reset_out_of_range(TopicPartition(TOPIC, 0, 5), 20, 30, _settings("fail"))


def test_earliest_above_the_log_end_runs_every_record_and_commits_the_log_start_first():
    tracker, start = reset_out_of_range(TopicPartition(TOPIC, 0, 57, metadata=encode(57, 60, [])), 0, 3,
                                        _settings("earliest"))
    assert start == 0 and tracker.committed == 0
    release = tracker.release(4096, position=0)  # nothing done yet: the group's 57 is still replaced by 0
    assert release is not None and (release.offset, release.metadata, release.outputs) == (0, "", [])
    assert [tracker.track(o) for o in range(3)] == [True, True, True]  # the old map is not applied to the new log


def test_latest_skips_to_the_log_end():
    tracker, start = reset_out_of_range(TopicPartition(TOPIC, 0, 57), 10, 13, _settings("latest"))
    assert start == 13 and tracker.committed == 13
    release = tracker.release(4096, position=13)
    assert release is not None and release.offset == 13
    assert tracker.release(4096, position=13) is None  # once committed, nothing more to send


def test_earliest_below_the_log_start_keeps_the_done_offsets_the_log_still_has():
    # Committed 10; done above it: 11-15 except 12 and 14. Retention removed everything below 13.
    tp = TopicPartition(TOPIC, 0, 10, metadata=encode(10, 15, [12, 14]))
    tracker, start = reset_out_of_range(tp, 13, 40, _settings("earliest"))
    assert start == 13 and tracker.committed == 14  # 13 is done: the first offset still to run is 14
    assert [o for o in range(13, 18) if not tracker.track(o)] == [13, 15]
    first = tracker.release(4096, position=18)
    assert first is not None and first.offset == 14  # the group's 10 (outside the log) is replaced at once


def test_a_fetch_below_the_committed_offset_while_running_is_a_topic_state_error_not_a_crash():
    tracker: PartitionTracker = PartitionTracker(12)
    record = SourceRecord(topic=TOPIC, partition=0, offset=0, timestamp_ms=0, key=b"k", value=b"{}", headers=[])
    with pytest.raises(TopicStateError) as stopped:
        track_fetched(tracker, None, record)
    assert "ns.evaluate-jobs[0]: fetched offset 0 is below the committed offset 12" in str(stopped.value)
    assert "CVQ_WORKER__OFFSET_RESET" in str(stopped.value) and stopped.value.exit_code == EXIT_TOPIC_STATE
    assert track_fetched(tracker, None, SourceRecord(topic=TOPIC, partition=0, offset=12, timestamp_ms=0, key=b"k",
                                                     value=b"{}", headers=[]))
