"""Reading a provider's rate-limit headers: the wait after a 429 comes from retry-after(-ms) alone; the
x-ratelimit-* headers describe its windows (fuzzed: anyone upstream can send anything)."""

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cv_queue.evaluation.llm.rate_headers import parse_duration, retry_after_hint, window_state

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
    assert retry_after_hint({"Retry-After": "2"}, now=NOW) == 2.0


def test_retry_after_http_date() -> None:
    date = formatdate(NOW + 30, usegmt=True)
    assert retry_after_hint({"retry-after": date}, now=NOW) == pytest.approx(30.0)


def test_a_date_in_the_past_is_no_wait() -> None:
    assert retry_after_hint({"retry-after": formatdate(NOW - 30, usegmt=True)}, now=NOW) == 0.0


def test_retry_after_ms() -> None:
    assert retry_after_hint({"retry-after-ms": "1500"}, now=NOW) == pytest.approx(1.5)


def test_the_reset_headers_are_not_a_wait() -> None:
    # The review's case: a window that refills in six minutes does not make a one-second Retry-After six minutes.
    headers = {"retry-after": "1", "x-ratelimit-reset-requests": "250ms", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_hint(headers, now=NOW) == 1.0
    assert retry_after_hint({"x-ratelimit-reset-tokens": "6m0s"}, now=NOW) is None


def test_retry_after_ms_is_the_more_precise_and_wins() -> None:
    assert retry_after_hint({"retry-after": "2", "retry-after-ms": "1250"}, now=NOW) == pytest.approx(1.25)
    # An unreadable one is passed over for the other.
    assert retry_after_hint({"retry-after": "2", "retry-after-ms": "soon"}, now=NOW) == 2.0


@pytest.mark.parametrize("text", ["whenever", "nan", "-nan"])
def test_an_unreadable_retry_after_is_no_hint(text: str) -> None:
    assert retry_after_hint({"retry-after": text}, now=NOW) is None


def test_a_negative_retry_after_is_no_hint() -> None:
    assert retry_after_hint({"retry-after": "-5"}, now=NOW) is None
    assert retry_after_hint({"retry-after-ms": "-5", "retry-after": "2"}, now=NOW) == 2.0


def test_no_rate_limit_header_means_no_hint() -> None:
    assert retry_after_hint({"content-type": "application/json"}, now=NOW) is None


def test_window_state_reads_limit_remaining_and_reset() -> None:
    headers = {"X-RateLimit-Limit-Requests": "1200", "x-ratelimit-remaining-requests": "1187",
               "x-ratelimit-reset-requests": "650ms", "x-ratelimit-limit-tokens": "200000",
               "x-ratelimit-remaining-tokens": "garbage", "x-ratelimit-reset-tokens": "6m0s"}
    requests, tokens = window_state(headers, "requests"), window_state(headers, "tokens")
    assert (requests.limit, requests.remaining, requests.reset_s) == (1200, 1187, pytest.approx(0.65))
    assert (tokens.limit, tokens.remaining, tokens.reset_s) == (200_000, None, 360.0)
    assert not window_state({}, "tokens").known


@given(st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms", "x-ratelimit-limit-tokens",
                                         "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]),
                       st.text(max_size=40)))
def test_any_header_text_gives_a_wait_and_a_window_or_none(headers: dict[str, str]) -> None:
    wait = retry_after_hint(headers, now=NOW)
    assert wait is None or wait >= 0
    state = window_state(headers, "tokens")
    for value in (state.limit, state.remaining, state.reset_s):
        assert value is None or value >= 0
