"""Routing and output sizing alone: Retry-After caps, records that would not fit, dead letters shrunk to fit."""

import math

import pytest

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory, RateLimitedError
from cv_queue.kafka.delivery import parse_delivery
from cv_queue.kafka.envelope import read_dead_letter
from cv_queue.kafka.fit import OutputLimits, shrink_dead_letter
from cv_queue.kafka.records import Failure, OutputRecord, SourceRecord
from cv_queue.kafka.routing import RESULT_TOO_LARGE_CLASS, Router
from cv_queue.kafka.stats import WorkerStats
from cv_queue.settings import QueueSettings

SETTINGS = QueueSettings()
NAMES = SETTINGS.topic_names
LIMITS = OutputLimits({NAMES.results: 1_048_588, NAMES.retry: 1_048_588, NAMES.dlq: 2_097_152})


def _delivery(value: bytes = b'{"job": 1}', headers: h.Headers | None = None, topic: str = NAMES.main) -> object:
    source = SourceRecord(topic, 3, 17, 1_700_000_000_000, b"job-1", value, headers or [])
    return parse_delivery(source, from_retry=topic == NAMES.retry, strict=False)


def _router(limits: OutputLimits = LIMITS) -> Router:
    return Router(SETTINGS, "w", limits, WorkerStats(slot="2-3", worker="w"))


def _rate_limited(after: float) -> Failure:
    return Failure.from_exception(RateLimitedError("429", retry_after_s=after), ErrorCategory.RATE_LIMITED)


def test_a_retry_after_within_the_cap_is_the_floor_of_the_delay() -> None:
    out = _router().failure(_delivery(), _rate_limited(30), calls=1)  # type: ignore[arg-type]
    assert out.topic == NAMES.retry
    due = h.read_int(out.headers, h.RETRY_DUE_AT, 0)
    failed = h.read_int(out.headers, h.FAILED_AT, 0)
    assert due - failed >= 30_000


@pytest.mark.parametrize("after", [3600.0, math.inf, 1e308])
def test_a_retry_after_over_the_cap_is_dead_lettered_as_rate_limited_with_what_was_asked(after: float) -> None:
    out = _router().failure(_delivery(), _rate_limited(after), calls=1)  # type: ignore[arg-type]
    assert out.topic == NAMES.dlq
    letter = read_dead_letter(out.topic, 1, 0, out.key, out.value, out.headers)
    assert letter.category == ErrorCategory.RATE_LIMITED
    assert h.read_str(out.headers, h.RETRY_AFTER_REQUESTED) == f"{after:g}"
    assert out.partition == SETTINGS.dlq_partition(ErrorCategory.RATE_LIMITED, b"job-1")


@pytest.mark.parametrize("after", [-5, float("nan"), "soon", None])
def test_a_meaningless_retry_after_is_ignored(after: object) -> None:
    exc = RateLimitedError("429")
    exc.retry_after_s = after  # type: ignore[assignment]
    failure = Failure.from_exception(exc, ErrorCategory.RATE_LIMITED)
    assert failure.retry_after_s is None
    assert _router().failure(_delivery(), failure, calls=1).topic == NAMES.retry  # type: ignore[arg-type]


def test_a_result_too_large_for_the_results_topic_is_a_permanent_dead_letter() -> None:
    small = OutputLimits({**LIMITS.by_topic, NAMES.results: 10_000})
    out = _router(small).success(_delivery(), b"x" * 20_000, calls=1)  # type: ignore[arg-type]
    letter = read_dead_letter(out.topic, 2, 0, out.key, out.value, out.headers)
    assert (out.topic, letter.category, letter.error_class) == (NAMES.dlq, ErrorCategory.PERMANENT,
                                                               RESULT_TOO_LARGE_CLASS)


def test_a_job_too_large_for_the_retry_topic_goes_to_the_dlq_whole() -> None:
    value = b"v" * 1_040_000  # fits the main topic, but not with a retry record's headers on top
    transient = Failure(ErrorCategory.TRANSIENT, "x.Boom", "boom", "trace " * 2000)
    out = _router().failure(_delivery(value, [("big", b"h" * 8_000)]), transient, calls=1)  # type: ignore[arg-type]
    assert out.topic == NAMES.dlq
    assert out.value == value and ("big", b"h" * 8_000) in out.headers
    assert out.size <= LIMITS.limit(NAMES.dlq)


def test_a_dead_letter_that_cannot_fit_is_shrunk_keeping_provenance() -> None:
    value = b"v" * 3_000_000
    router = _router()
    failure = Failure(ErrorCategory.INVALID_PAYLOAD, "x.Oversize", "oversize", "trace " * 5000)
    out = router.dead_letter(_delivery(value, [("foreign", b"f" * 100)]), failure, 0, 0)  # type: ignore[arg-type]
    assert out.size <= LIMITS.limit(NAMES.dlq)
    assert h.read_int(out.headers, h.VALUE_TRUNCATED, 0) == len(value)
    assert h.read_int(out.headers, h.HEADERS_DROPPED, 0) == 1
    assert out.value == value[: len(out.value or b"")]
    letter = read_dead_letter(out.topic, 3, 0, out.key, out.value, out.headers)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (NAMES.main, 3, 17)
    assert letter.category == ErrorCategory.INVALID_PAYLOAD


def test_shrinking_stops_as_soon_as_the_letter_fits() -> None:
    out = OutputRecord("dlq", b"k", b"v" * 1000, [(h.ERROR_STACKTRACE, b"s" * 5000), (h.ERROR_MESSAGE, b"m")])
    shrunk = shrink_dead_letter(out, limit=2_000)
    assert shrunk.value == out.value, "dropping the stack trace was enough; the value must stay whole"
    assert h.last(shrunk.headers, h.VALUE_TRUNCATED) is None
    huge_key = OutputRecord("dlq", b"k" * 5000, b"", [])
    assert shrink_dead_letter(huge_key, limit=1_000).size <= 1_000
