"""Dead-letter headers: what the worker writes decodes back to the same facts, byte-exact payloads included."""

import pytest

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory, InvalidPayloadError, PermanentJobError
from cv_queue.kafka.wire.envelope import (
    Failure,
    InvalidDeadLetterError,
    SourceRecord,
    dead_letter_record,
    read_dead_letter,
    replayed_headers,
    retry_record,
)

VALUE = b'{"job_id": "j-1", "weird bytes": "\\u00e9"}'
SOURCE = SourceRecord(topic="evaluate-jobs", partition=3, offset=41, timestamp_ms=1_700_000_000_000, key=b"j-1",
                      value=VALUE, headers=[("traceparent", b"00-abc"), ("tenant", b"acme"), ("empty", None)])


def _failure() -> Failure:
    try:
        raise PermanentJobError("the model refused: " + "x" * 5000)
    except PermanentJobError as exc:
        return Failure.from_exception(exc, ErrorCategory.PERMANENT)


def test_dead_letter_round_trip():
    out = dead_letter_record(SOURCE, _failure(), attempts=1, handler_calls=1, worker="host:1:2-3",
                             dlq_topic="dlq", dlq_partition=2, failed_at_ms=1_700_000_005_000)
    letter = read_dead_letter("dlq", 2, 9, out.key, out.value, out.headers)
    assert (letter.key, letter.value) == (SOURCE.key, SOURCE.value)  # byte-exact
    assert letter.headers == SOURCE.headers  # the producer's own headers, in order
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == ("evaluate-jobs", 3, 41)
    assert int(letter.original_timestamp.timestamp() * 1000) == SOURCE.timestamp_ms
    assert letter.category == ErrorCategory.PERMANENT
    assert letter.error_class == "cv_queue.errors.PermanentJobError"
    assert letter.error_message.startswith("the model refused") and len(letter.error_message) <= h.MAX_MESSAGE_CHARS
    assert "Traceback" in letter.error_stacktrace and len(letter.error_stacktrace) <= h.MAX_STACKTRACE_CHARS
    assert (letter.attempts, letter.replays, letter.worker) == (1, 0, "host:1:2-3")
    assert letter.first_failed_at == letter.failed_at
    names = {k for k, _ in out.headers}
    for required in (h.ORIGINAL_TOPIC, h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET, h.ORIGINAL_TIMESTAMP,
                     h.ERROR_CATEGORY, h.ERROR_CLASS, h.ERROR_MESSAGE, h.ERROR_STACKTRACE, h.ATTEMPTS,
                     h.FIRST_FAILED_AT, h.FAILED_AT, h.WORKER, h.REPLAYS):
        assert required in names


def test_provenance_and_first_failure_survive_retry_hops():
    hop1 = retry_record(SOURCE, _failure(), 1, 3, "w", "retry", due_at_ms=2000, failed_at_ms=1000)
    assert hop1.partition == SOURCE.partition  # back to the same partition number
    from_retry = SourceRecord(topic="retry", partition=3, offset=7, timestamp_ms=1001, key=hop1.key,
                              value=hop1.value, headers=hop1.headers)
    final = dead_letter_record(from_retry, _failure(), 2, 6, "w", "dlq", 2, failed_at_ms=5000)
    letter = read_dead_letter("dlq", 2, 0, final.key, final.value, final.headers)
    assert (letter.original_topic, letter.original_offset) == ("evaluate-jobs", 41)
    assert int(letter.first_failed_at.timestamp() * 1000) == 1000
    assert int(letter.failed_at.timestamp() * 1000) == 5000
    assert h.read_int(final.headers, h.HANDLER_CALLS, 0) == 6
    assert h.last(final.headers, h.RETRY_DUE_AT) is None  # stale due times do not follow a letter into the DLQ
    assert letter.headers == SOURCE.headers


def test_replay_headers_reset_attempts_and_count_replays():
    out = dead_letter_record(SOURCE, _failure(), 4, 9, "w", "dlq", 2, 1000)
    letter = read_dead_letter("dlq", 2, 0, out.key, out.value, out.headers)
    replayed = replayed_headers(letter)
    assert h.read_int(replayed, h.REPLAYS, -1) == 1
    assert h.last(replayed, h.ATTEMPTS) is None and h.last(replayed, h.ERROR_CLASS) is None
    assert [kv for kv in replayed if not kv[0].startswith("cvq.")] == SOURCE.headers


def test_missing_or_garbage_headers_are_not_a_dead_letter():
    out = dead_letter_record(SOURCE, _failure(), 1, 1, "w", "dlq", 2, 1000)
    without = [kv for kv in out.headers if kv[0] != h.ORIGINAL_OFFSET]
    with pytest.raises(InvalidDeadLetterError):
        read_dead_letter("dlq", 2, 0, out.key, out.value, without)
    garbage = [*out.headers, (h.ATTEMPTS, b"\xffNaN")]
    with pytest.raises(InvalidDeadLetterError):
        read_dead_letter("dlq", 2, 0, out.key, out.value, garbage)


@pytest.mark.parametrize("raw", [b"abc", b"-1", b" 7", b"\xff"])
def test_own_integer_headers_must_parse(raw):
    with pytest.raises(InvalidPayloadError) as info:
        h.validate_own([(h.ATTEMPTS, raw)])
    assert info.value.reason == "garbage_header"
