"""Reading how long a provider wants us to wait: every header it may send, the longest wait wins."""

from email.utils import formatdate

import pytest

from cv_queue.evaluation.llm.api_errors import parse_duration, retry_after_floor

NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("20ms", 0.02),
        ("1.5s", 1.5),
        ("500us", 0.0005),
        ("7", 7.0),
        ("0.75", 0.75),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1 s", "5x", "1s garbage", "m"])
def test_unreadable_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_retry_after_seconds() -> None:
    assert retry_after_floor({"Retry-After": "2"}, now=NOW) == 2.0


def test_retry_after_http_date() -> None:
    date = formatdate(NOW + 30, usegmt=True)
    assert retry_after_floor({"retry-after": date}, now=NOW) == pytest.approx(30.0)


def test_a_date_in_the_past_is_no_wait() -> None:
    assert retry_after_floor({"retry-after": formatdate(NOW - 30, usegmt=True)}, now=NOW) == 0.0


def test_retry_after_ms() -> None:
    assert retry_after_floor({"retry-after-ms": "1500"}, now=NOW) == pytest.approx(1.5)


def test_the_largest_wait_wins() -> None:
    headers = {
        "retry-after": "1",
        "retry-after-ms": "800",
        "x-ratelimit-reset-requests": "250ms",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert retry_after_floor(headers, now=NOW) == 360.0
    headers["x-ratelimit-reset-tokens"] = "100ms"
    assert retry_after_floor(headers, now=NOW) == 1.0


def test_unreadable_headers_are_ignored_and_the_rest_kept() -> None:
    headers = {"retry-after": "whenever", "x-ratelimit-reset-requests": "3s", "x-ratelimit-reset-tokens": "soon"}
    assert retry_after_floor(headers, now=NOW) == 3.0


def test_no_rate_limit_header_means_no_floor() -> None:
    assert retry_after_floor({"content-type": "application/json"}, now=NOW) is None
    assert retry_after_floor({"retry-after": "whenever"}, now=NOW) is None
