"""The plain records the broker layer passes around: what was consumed, what to produce, and why a job failed."""

import math
import traceback
from dataclasses import dataclass

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory


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

    @property
    def size(self) -> int:
        """Bytes this record holds in memory (key, value and headers), for the worker's memory caps."""
        return record_size(self.key, self.value, self.headers)


@dataclass(slots=True)
class OutputRecord:
    """A record to produce inside the transaction that settles its source offset."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: h.Headers
    partition: int | None = None  # None: the partitioner decides by key

    @property
    def size(self) -> int:
        return record_size(self.key, self.value, self.headers)


# Per-record and per-header framing in Kafka's record format (varints, attributes, deltas), rounded up, so that a
# size estimate is never below what the broker counts for an uncompressed record.
RECORD_OVERHEAD = 64
HEADER_OVERHEAD = 10


def record_size(key: bytes | None, value: bytes | None, headers: h.Headers | None) -> int:
    size = RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, raw in headers or []:
        size += HEADER_OVERHEAD + len(name.encode("utf-8", errors="replace")) + len(raw or b"")
    return size


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
        try:
            message = str(exc) or klass.__name__
        except Exception:  # a handler's exception whose __str__ itself fails must still become a failure
            message = klass.__name__
        try:
            stacktrace = "".join(traceback.format_exception(exc))
        except Exception:
            stacktrace = ""
        return cls(
            category=category,
            error_class=f"{klass.__module__}.{klass.__qualname__}",
            message=message,
            stacktrace=stacktrace,
            retry_after_s=_retry_after(exc),
        )


def _retry_after(exc: BaseException) -> float | None:
    """A rate limiter's retry-after in seconds, or None when absent or meaningless (negative, NaN, not a number).

    An infinite or huge value is kept: the router compares it with the retry policy's cap.
    """
    raw = getattr(exc, "retry_after_s", None)
    try:
        value = float(raw) if raw is not None else None
    except (TypeError, ValueError, OverflowError):
        return None
    if value is None or math.isnan(value) or value < 0:
        return None
    return value
