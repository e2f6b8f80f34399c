"""Failure categories and the exceptions handlers raise to say which category a failure is in.

A category decides the route: `transient` and `rate_limited` are retried (in process, then through the
retry topic), `permanent` and `invalid_payload` go straight to the dead-letter queue.
"""

from enum import StrEnum


class ErrorCategory(StrEnum):
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"
    INVALID_PAYLOAD = "invalid_payload"

    @property
    def retryable(self) -> bool:
        return self in (ErrorCategory.TRANSIENT, ErrorCategory.RATE_LIMITED)


#: DLQ partition order: dead letters are partitioned by category so that a reader of offsets alone
#: (the Dagster DLQ sensor) knows how many letters of each category arrived.
CATEGORY_ORDER: tuple[ErrorCategory, ...] = (
    ErrorCategory.TRANSIENT,
    ErrorCategory.RATE_LIMITED,
    ErrorCategory.PERMANENT,
    ErrorCategory.INVALID_PAYLOAD,
)


#: What replays by default, by hand or from the sensor: the categories a later attempt can cure.
DEFAULT_REPLAY_CATEGORIES: tuple[ErrorCategory, ...] = (ErrorCategory.TRANSIENT, ErrorCategory.RATE_LIMITED)


class JobError(Exception):
    """Base of the failures a handler raises on purpose; the subclass names the category."""

    category: ErrorCategory = ErrorCategory.TRANSIENT


class TransientJobError(JobError):
    """A blip worth retrying soon: a timeout, a dropped connection, a 5xx."""

    category = ErrorCategory.TRANSIENT


class RateLimitedError(JobError):
    """The upstream asked us to slow down, optionally saying for how long."""

    category = ErrorCategory.RATE_LIMITED

    def __init__(self, message: str = "rate limited", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentJobError(JobError):
    """Retrying cannot help: the input is wrong for this handler, or a referenced file is gone."""

    category = ErrorCategory.PERMANENT


class MalformedOutputError(JobError):
    """The handler's own output is unusable (a malformed or out-of-range LLM answer): worth a repair call or two,
    then permanent. Raised by handlers; pydantic ValidationError and JSONDecodeError from a handler count the same."""

    category = ErrorCategory.PERMANENT


class InvalidPayloadError(JobError):
    """The record is not a valid job: undecodable, wrong shape, unknown schema, bad headers."""

    category = ErrorCategory.INVALID_PAYLOAD

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
