"""Record header names (the `cvq.` namespace) and a strict codec for their values.

Numbers and timestamps travel as ASCII decimal (timestamps in epoch milliseconds), so any Kafka tool
can read them. Reading a header we own that does not parse raises InvalidPayloadError: a record with
garbage bookkeeping is not retried on guesswork.
"""

from collections.abc import Iterable, Sequence

from cv_queue.errors import InvalidPayloadError

Headers = list[tuple[str, bytes | None]]

PREFIX = "cvq."
# provenance of a failed record: where it was first consumed
ORIGINAL_TOPIC = "cvq.original.topic"
ORIGINAL_PARTITION = "cvq.original.partition"
ORIGINAL_OFFSET = "cvq.original.offset"
ORIGINAL_TIMESTAMP = "cvq.original.timestamp"
# the last error
ERROR_CATEGORY = "cvq.error.category"
ERROR_CLASS = "cvq.error.class"
ERROR_MESSAGE = "cvq.error.message"
ERROR_STACKTRACE = "cvq.error.stacktrace"
# bookkeeping across deliveries
ATTEMPTS = "cvq.attempts"  # failed deliveries that count toward retry.max_attempts (throttled ones do not)
LANE = "cvq.lane"  # "interactive" on a retry record or letter of an interactive job; absent for bulk
THROTTLES = "cvq.throttles"  # deliveries refused by a rate limiter (429) so far
THROTTLED_SINCE = "cvq.throttled.since"  # when the first of them was refused (ms): rate_limit_budget_s runs from it
HANDLER_CALLS = "cvq.handler.calls"  # handler invocations across every delivery, in-process retries included
FIRST_FAILED_AT = "cvq.first.failed.at"
FAILED_AT = "cvq.failed.at"
WORKER = "cvq.worker"
REPLAYS = "cvq.replays"
RETRY_DUE_AT = "cvq.retry.due.at"
PARKED_AT = "cvq.parked.at"
PARKED_REASON = "cvq.parked.reason"
# a dead letter of a job a rate limiter refused past retry.rate_limit_budget_s: the wait it asked for (seconds), which
# a replay honours
RETRY_AFTER_REQUESTED = "cvq.retry.after.requested.s"
# a dead letter shrunk to fit its topic: the original size of what was cut
VALUE_TRUNCATED = "cvq.value.truncated"
KEY_TRUNCATED = "cvq.key.truncated"
HEADERS_DROPPED = "cvq.headers.dropped"

MAX_MESSAGE_CHARS = 2_000
MAX_STACKTRACE_CHARS = 8_000  # Spring's lesson: whole stack traces on every hop overflow max.message.bytes


def last(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> bytes | None:
    """The last value of a header (Kafka allows repeats; the newest wins)."""
    if not headers:
        return None
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def read_int(headers: Sequence[tuple[str, bytes | None]] | None, name: str, default: int) -> int:
    raw = last(headers, name)
    if raw is None:
        return default
    try:
        text = raw.decode("ascii")
        value = int(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidPayloadError("garbage_header", f"{name}={raw[:40]!r} is not an integer") from exc
    if value < 0 or text.strip() != text:
        raise InvalidPayloadError("garbage_header", f"{name}={raw[:40]!r} is not a non-negative integer")
    return value


def read_int_lenient(headers: Sequence[tuple[str, bytes | None]] | None, name: str, default: int) -> int:
    """read_int for bookkeeping we write back out: garbage counts as absent instead of raising."""
    try:
        return read_int(headers, name, default)
    except InvalidPayloadError:
        return default


def read_str(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    raw = last(headers, name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayloadError("garbage_header", f"{name} is not UTF-8") from exc


def int_value(value: int) -> bytes:
    return str(int(value)).encode("ascii")


def str_value(value: str, limit: int | None = None) -> bytes:
    if limit is not None and len(value) > limit:
        value = value[: limit - 20] + f"... [{len(value) - limit + 20} chars cut]"
    return value.encode("utf-8", errors="replace")


def foreign(headers: Iterable[tuple[str, bytes | None]] | None) -> Headers:
    """The headers that are not ours: what the producer of the original record sent."""
    return [(k, v) for k, v in (headers or []) if not k.startswith(PREFIX)]


def validate_own(headers: Sequence[tuple[str, bytes | None]] | None) -> None:
    """Reject a record whose cvq.* headers are malformed before any of them is trusted."""
    for name in (ATTEMPTS, HANDLER_CALLS, REPLAYS, RETRY_DUE_AT, FIRST_FAILED_AT):
        read_int(headers, name, 0)
    for key, value in headers or []:
        if key.startswith(PREFIX) and value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidPayloadError("garbage_header", f"{key} is not UTF-8") from exc
