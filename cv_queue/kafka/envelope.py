"""The records a worker writes for a job it could not finish: retry records, dead letters, parked letters.

Each keeps the original key and value byte-exact and the original producer's headers, and adds the
`cvq.` headers that say where the record first came from, what went wrong, and how often it was tried.
`read_dead_letter` is the inverse used by replay and by `cv-queue dlq peek`; a test round-trips the two.
"""

import traceback
from dataclasses import dataclass
from datetime import UTC, datetime

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory, InvalidPayloadError
from cv_queue.messages import DeadLetter


@dataclass(slots=True)
class SourceRecord:
    """A consumed record, detached from the client's Message object."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: h.Headers


@dataclass(slots=True)
class OutputRecord:
    """A record to produce inside the transaction that settles its source offset."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: h.Headers
    partition: int | None = None  # None: the partitioner decides by key


@dataclass(slots=True, frozen=True)
class Failure:
    category: ErrorCategory
    error_class: str
    message: str
    stacktrace: str
    retry_after_s: float | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, category: ErrorCategory) -> "Failure":
        klass = type(exc)
        return cls(
            category=category,
            error_class=f"{klass.__module__}.{klass.__qualname__}",
            message=str(exc) or klass.__name__,
            stacktrace="".join(traceback.format_exception(exc)),
            retry_after_s=getattr(exc, "retry_after_s", None),
        )


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _carried_provenance(source: SourceRecord) -> h.Headers | None:
    """The provenance an earlier hop recorded, if it is complete and well-formed."""
    try:
        topic = h.read_str(source.headers, h.ORIGINAL_TOPIC)
        numbers = [h.read_int(source.headers, name, -1)
                   for name in (h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET, h.ORIGINAL_TIMESTAMP)]
    except InvalidPayloadError:
        return None
    if topic is None or min(numbers) < 0:
        return None
    return [(h.ORIGINAL_TOPIC, h.str_value(topic)),
            *((name, h.int_value(n)) for name, n in
              zip((h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET, h.ORIGINAL_TIMESTAMP), numbers, strict=True))]


def _provenance(source: SourceRecord) -> h.Headers:
    """Where the job was first consumed: kept from an earlier hop, else this record."""
    carried = _carried_provenance(source)
    if carried is not None:
        return carried
    return [
        (h.ORIGINAL_TOPIC, h.str_value(source.topic)),
        (h.ORIGINAL_PARTITION, h.int_value(source.partition)),
        (h.ORIGINAL_OFFSET, h.int_value(source.offset)),
        (h.ORIGINAL_TIMESTAMP, h.int_value(source.timestamp_ms)),
    ]


def failure_headers(
    source: SourceRecord, failure: Failure, attempts: int, handler_calls: int, worker: str, failed_at_ms: int
) -> h.Headers:
    """Foreign headers + provenance + the last error + bookkeeping. Replays count is carried over."""
    # Lenient reads: a record dead-lettered *because* its bookkeeping headers are garbage still gets
    # a well-formed dead letter.
    first_failed = h.read_int_lenient(source.headers, h.FIRST_FAILED_AT, 0) or failed_at_ms
    return [
        *h.foreign(source.headers),
        *_provenance(source),
        (h.ERROR_CATEGORY, h.str_value(failure.category.value)),
        (h.ERROR_CLASS, h.str_value(failure.error_class)),
        (h.ERROR_MESSAGE, h.str_value(failure.message, h.MAX_MESSAGE_CHARS)),
        (h.ERROR_STACKTRACE, h.str_value(failure.stacktrace, h.MAX_STACKTRACE_CHARS)),
        (h.ATTEMPTS, h.int_value(attempts)),
        (h.HANDLER_CALLS, h.int_value(handler_calls)),
        (h.FIRST_FAILED_AT, h.int_value(first_failed)),
        (h.FAILED_AT, h.int_value(failed_at_ms)),
        (h.WORKER, h.str_value(worker)),
        (h.REPLAYS, h.int_value(h.read_int_lenient(source.headers, h.REPLAYS, 0))),
    ]


def retry_record(source: SourceRecord, failure: Failure, attempts: int, handler_calls: int, worker: str,
                 retry_topic: str, due_at_ms: int, failed_at_ms: int) -> OutputRecord:
    """The job, back on the retry topic partition numbered like its source partition."""
    hdrs = failure_headers(source, failure, attempts, handler_calls, worker, failed_at_ms)
    hdrs.append((h.RETRY_DUE_AT, h.int_value(due_at_ms)))
    return OutputRecord(topic=retry_topic, key=source.key, value=source.value, headers=hdrs,
                        partition=source.partition)


def dead_letter_record(source: SourceRecord, failure: Failure, attempts: int, handler_calls: int, worker: str,
                       dlq_topic: str, dlq_partition: int, failed_at_ms: int) -> OutputRecord:
    hdrs = failure_headers(source, failure, attempts, handler_calls, worker, failed_at_ms)
    return OutputRecord(topic=dlq_topic, key=source.key, value=source.value, headers=hdrs, partition=dlq_partition)


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class InvalidDeadLetterError(InvalidPayloadError):
    """A DLQ record without the headers a dead letter must carry."""


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
        )
    except InvalidPayloadError as exc:
        raise InvalidDeadLetterError("not_a_dead_letter", exc.detail or str(exc)) from exc


def replayed_headers(letter: DeadLetter) -> h.Headers:
    """Headers of a job sent back to the main topic: the original ones, replays + 1, attempts reset."""
    return [*letter.headers, (h.REPLAYS, h.int_value(letter.replays + 1))]


def parked_headers(dlq_headers: h.Headers | None, reason: str, parked_at_ms: int) -> h.Headers:
    """A parked letter keeps every DLQ header (the whole story) plus why and when it was parked."""
    return [*(dlq_headers or []), (h.PARKED_AT, h.int_value(parked_at_ms)), (h.PARKED_REASON, h.str_value(reason))]
