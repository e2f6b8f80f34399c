"""The records a worker writes for a job it could not finish: retry records, dead letters, parked letters.

Each keeps the original key and value byte-exact and the original producer's headers, and adds the
`cvq.` headers that say where the record first came from, what went wrong, and how often it was tried.
`read_dead_letter` is the inverse used by replay and by `cv-queue dlq peek`; a test round-trips the two.
"""

from datetime import UTC, datetime

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory, InvalidPayloadError
from cv_queue.kafka.wire.delivery import Delivery, parse_delivery
from cv_queue.kafka.wire.records import Failure, OutputRecord, SourceRecord
from cv_queue.lanes import Lane
from cv_queue.messages import DeadLetter

__all__ = [
    "Failure", "InvalidDeadLetterError", "OutputRecord", "SourceRecord", "dead_letter_record", "failure_headers",
    "now_ms", "parked_headers", "read_dead_letter", "replayed_headers", "retry_record",
]


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _as_delivery(record: SourceRecord | Delivery) -> Delivery:
    # Lenient: a record dead-lettered *because* its bookkeeping headers are garbage still gets a well-formed letter.
    return record if isinstance(record, Delivery) else parse_delivery(record, from_retry=True, strict=False)


def failure_headers(
    record: SourceRecord | Delivery, failure: Failure, attempts: int, handler_calls: int, worker: str,
    failed_at_ms: int, throttles: int = 0, throttled_since_ms: int = 0,
) -> h.Headers:
    """Foreign headers + provenance + the last error + bookkeeping. The replays count is carried over; the
    throttle count and its start only when a rate limiter refused the job (`throttles` > 0)."""
    delivery = _as_delivery(record)
    throttled = [(h.THROTTLES, h.int_value(throttles)),
                 (h.THROTTLED_SINCE, h.int_value(throttled_since_ms))] if throttles else []
    return [
        *delivery.foreign_headers,
        *delivery.provenance.headers(),
        (h.ERROR_CATEGORY, h.str_value(failure.category.value)),
        (h.ERROR_CLASS, h.str_value(failure.error_class)),
        (h.ERROR_MESSAGE, h.str_value(failure.message, h.MAX_MESSAGE_CHARS)),
        (h.ERROR_STACKTRACE, h.str_value(failure.stacktrace, h.MAX_STACKTRACE_CHARS)),
        (h.ATTEMPTS, h.int_value(attempts)),
        (h.HANDLER_CALLS, h.int_value(handler_calls)),
        (h.FIRST_FAILED_AT, h.int_value(delivery.first_failed_at_ms or failed_at_ms)),
        (h.FAILED_AT, h.int_value(failed_at_ms)),
        (h.WORKER, h.str_value(worker)),
        (h.REPLAYS, h.int_value(delivery.replays)),
        *throttled,
        *([(h.LANE, Lane.INTERACTIVE.value.encode())] if delivery.interactive else []),
    ]


def retry_record(record: SourceRecord | Delivery, failure: Failure, attempts: int, handler_calls: int, worker: str,
                 retry_topic: str, due_at_ms: int, failed_at_ms: int, throttles: int = 0,
                 throttled_since_ms: int = 0) -> OutputRecord:
    """The job, back on the retry topic partition numbered like its source partition."""
    source = record.source if isinstance(record, Delivery) else record
    hdrs = failure_headers(record, failure, attempts, handler_calls, worker, failed_at_ms, throttles,
                           throttled_since_ms)
    hdrs.append((h.RETRY_DUE_AT, h.int_value(due_at_ms)))
    return OutputRecord(topic=retry_topic, key=source.key, value=source.value, headers=hdrs,
                        partition=source.partition)


def dead_letter_record(record: SourceRecord | Delivery, failure: Failure, attempts: int, handler_calls: int,
                       worker: str, dlq_topic: str, dlq_partition: int, failed_at_ms: int, throttles: int = 0,
                       throttled_since_ms: int = 0) -> OutputRecord:
    source = record.source if isinstance(record, Delivery) else record
    hdrs = failure_headers(record, failure, attempts, handler_calls, worker, failed_at_ms, throttles,
                           throttled_since_ms)
    return OutputRecord(topic=dlq_topic, key=source.key, value=source.value, headers=hdrs, partition=dlq_partition)


class InvalidDeadLetterError(InvalidPayloadError):
    """A DLQ record without the headers a dead letter must carry."""


def _ms_to_dt(ms: int) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:  # past year 9999: anyone can write such a header
        raise InvalidDeadLetterError("not_a_dead_letter", f"timestamp {ms} ms is out of range") from exc


def _seconds(text: str | None) -> float | None:
    """A wait in seconds from a header anyone could have written: None unless a number >= 0 (inf included)."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None  # NaN compares False: dropped too


def read_dead_letter(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                     headers: h.Headers | None) -> DeadLetter:
    """Decode a DLQ record; raise InvalidDeadLetterError if its provenance headers are missing or garbage."""
    hdrs = headers or []

    def need_str(name: str) -> str:
        text = h.read_str(hdrs, name)
        if text is None:
            raise InvalidDeadLetterError("not_a_dead_letter", f"header {name} is missing")
        return text

    def need_int(name: str) -> int:
        if h.last(hdrs, name) is None:
            raise InvalidDeadLetterError("not_a_dead_letter", f"header {name} is missing")
        return h.read_int(hdrs, name, 0)

    try:
        category = ErrorCategory(need_str(h.ERROR_CATEGORY))
    except ValueError as exc:
        raise InvalidDeadLetterError("not_a_dead_letter", f"unknown {h.ERROR_CATEGORY}") from exc
    try:
        return DeadLetter(
            dlq_topic=topic, dlq_partition=partition, dlq_offset=offset, key=key, value=value,
            headers=h.foreign(hdrs),
            original_topic=need_str(h.ORIGINAL_TOPIC),
            original_partition=need_int(h.ORIGINAL_PARTITION),
            original_offset=need_int(h.ORIGINAL_OFFSET),
            original_timestamp=_ms_to_dt(need_int(h.ORIGINAL_TIMESTAMP)),
            category=category,
            error_class=need_str(h.ERROR_CLASS),
            error_message=need_str(h.ERROR_MESSAGE),
            error_stacktrace=h.read_str(hdrs, h.ERROR_STACKTRACE) or "",
            attempts=need_int(h.ATTEMPTS),
            first_failed_at=_ms_to_dt(need_int(h.FIRST_FAILED_AT)),
            failed_at=_ms_to_dt(need_int(h.FAILED_AT)),
            worker=need_str(h.WORKER),
            replays=h.read_int(hdrs, h.REPLAYS, 0),
            retry_after_requested_s=_seconds(h.read_str(hdrs, h.RETRY_AFTER_REQUESTED)),
        )
    except InvalidPayloadError as exc:
        raise InvalidDeadLetterError("not_a_dead_letter", exc.detail or str(exc)) from exc


def replayed_headers(letter: DeadLetter) -> h.Headers:
    """Headers of a job sent back to the main topic: the original ones, replays + 1, attempts reset."""
    return [*letter.headers, (h.REPLAYS, h.int_value(letter.replays + 1))]


def parked_headers(dlq_headers: h.Headers | None, reason: str, parked_at_ms: int) -> h.Headers:
    """A parked letter keeps every DLQ header (the whole story) plus why and when it was parked."""
    return [*(dlq_headers or []), (h.PARKED_AT, h.int_value(parked_at_ms)), (h.PARKED_REASON, h.str_value(reason))]
