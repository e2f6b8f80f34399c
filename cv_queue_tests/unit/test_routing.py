"""Routing and output sizing alone: throttled jobs and their budget, records that would not fit, dead letters
shrunk to fit."""

import math
from dataclasses import replace

import pytest

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory, RateLimitedError
from cv_queue.kafka.metrics.stats import WorkerStats
from cv_queue.kafka.wire.delivery import parse_delivery
from cv_queue.kafka.wire.envelope import now_ms, read_dead_letter
from cv_queue.kafka.wire.fit import OutputLimits, shrink_dead_letter
from cv_queue.kafka.wire.records import Failure, OutputRecord, SourceRecord
from cv_queue.kafka.worker.backoff import delay_bounds_ms
from cv_queue.kafka.worker.routing import RESULT_TOO_LARGE_CLASS, Router
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


def _rate_limited_without_hint() -> Failure:
    return Failure.from_exception(RateLimitedError("429"), ErrorCategory.RATE_LIMITED)


def _throttled(headers: h.Headers) -> object:
    return _delivery(headers=headers, topic=NAMES.retry)


def test_a_retry_after_beyond_the_backoff_cap_is_waited_for_on_the_retry_topic() -> None:
    # 300 s is five times retry.max_delay_ms: the provider's word, not our backoff, sets the wait.
    out = _router().failure(_delivery(), _rate_limited(300), calls=1)  # type: ignore[arg-type]
    assert out.topic == NAMES.retry
    due, failed = h.read_int(out.headers, h.RETRY_DUE_AT, 0), h.read_int(out.headers, h.FAILED_AT, 0)
    assert 300_000 <= due - failed <= 300_000 * (1 + SETTINGS.retry.jitter)
    assert h.read_int(out.headers, h.ATTEMPTS, -1) == 0
    assert h.read_int(out.headers, h.THROTTLES, 0) == 1
    assert h.read_int(out.headers, h.THROTTLED_SINCE, 0) == failed


def test_throttles_never_use_up_max_attempts() -> None:
    attempts = SETTINGS.retry.max_attempts - 1  # one more failed delivery would be the last
    headers: h.Headers = [(h.ATTEMPTS, b"%d" % attempts), (h.HANDLER_CALLS, b"9")]
    for throttles in range(1, 60):
        out = _router().failure(_throttled(headers), _rate_limited(1), calls=1)  # type: ignore[arg-type]
        assert out.topic == NAMES.retry, f"throttle {throttles} was dead-lettered"
        assert h.read_int(out.headers, h.ATTEMPTS, -1) == attempts
        assert h.read_int(out.headers, h.THROTTLES, 0) == throttles
        headers = out.headers
    transient = Failure(ErrorCategory.TRANSIENT, "x.Boom", "boom", "")
    assert _router().failure(_throttled(headers), transient, calls=1).topic == NAMES.dlq  # type: ignore[arg-type]


def test_without_a_retry_after_a_throttle_backs_off_by_its_throttle_count() -> None:
    headers: h.Headers = [(h.THROTTLES, b"3"), (h.THROTTLED_SINCE, b"%d" % now_ms())]
    out = _router().failure(_throttled(headers), _rate_limited_without_hint(), calls=1)  # type: ignore[arg-type]
    due, failed = h.read_int(out.headers, h.RETRY_DUE_AT, 0), h.read_int(out.headers, h.FAILED_AT, 0)
    low, high = delay_bounds_ms(4, SETTINGS.retry)
    assert out.topic == NAMES.retry and low <= due - failed <= high + 1


def test_the_budget_runs_from_the_first_refusal() -> None:
    budget_ms = int(SETTINGS.retry.rate_limit_budget_s * 1000)
    since = now_ms() - budget_ms + 5_000  # five seconds of budget left
    headers: h.Headers = [(h.THROTTLES, b"40"), (h.THROTTLED_SINCE, b"%d" % since)]
    kept = _router().failure(_throttled(headers), _rate_limited(1), calls=1)  # type: ignore[arg-type]
    assert kept.topic == NAMES.retry and h.read_int(kept.headers, h.THROTTLED_SINCE, 0) == since
    out = _router().failure(_throttled(headers), _rate_limited(30), calls=1)  # type: ignore[arg-type]
    assert out.topic == NAMES.dlq
    letter = read_dead_letter(out.topic, 1, 0, out.key, out.value, out.headers)
    assert letter.category == ErrorCategory.RATE_LIMITED and "rate_limit_budget_s" in letter.error_message
    assert h.read_int(out.headers, h.THROTTLES, 0) == 41


@pytest.mark.parametrize("after", [7200.0, math.inf, 1e308])
def test_a_retry_after_past_the_budget_is_dead_lettered_as_rate_limited_with_what_was_asked(after: float) -> None:
    out = _router().failure(_delivery(), _rate_limited(after), calls=1)  # type: ignore[arg-type]
    assert out.topic == NAMES.dlq
    letter = read_dead_letter(out.topic, 1, 0, out.key, out.value, out.headers)
    assert letter.category == ErrorCategory.RATE_LIMITED
    assert letter.retry_after_requested_s == after
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


def test_an_interactive_job_stays_interactive_through_the_retry_topic() -> None:
    interactive = replace(_delivery(), interactive=True)  # type: ignore[type-var]
    out = _router().failure(interactive, _rate_limited(1), calls=1)  # type: ignore[arg-type]
    assert h.read_str(out.headers, h.LANE) == "interactive"
    back = _delivery(headers=out.headers, topic=NAMES.retry)
    assert back.interactive  # type: ignore[attr-defined]
    bulk = _router().failure(_delivery(), _rate_limited(1), calls=1)  # type: ignore[arg-type]
    assert h.read_str(bulk.headers, h.LANE) is None
    assert not _delivery(headers=bulk.headers, topic=NAMES.retry).interactive  # type: ignore[attr-defined]
    # On the main topic the header means nothing: the lane is the topic's.
    assert not _delivery(headers=out.headers).interactive  # type: ignore[attr-defined]


@pytest.mark.parametrize("after", [None, 0.0])
def test_a_throttle_that_asks_for_no_wait_backs_off_whatever_its_count(after: float | None) -> None:
    # A thousand throttles in an hour is easy with sub-second Retry-Afters; the next backoff must still be a delay.
    headers: h.Headers = [(h.THROTTLES, b"5000"), (h.THROTTLED_SINCE, b"%d" % now_ms())]
    failure = _rate_limited_without_hint() if after is None else _rate_limited(after)
    out = _router().failure(_throttled(headers), failure, calls=1)  # type: ignore[arg-type]
    due, failed = h.read_int(out.headers, h.RETRY_DUE_AT, 0), h.read_int(out.headers, h.FAILED_AT, 0)
    low, high = delay_bounds_ms(5001, SETTINGS.retry)
    assert out.topic == NAMES.retry and low <= due - failed <= high + 1 and due - failed > 0
