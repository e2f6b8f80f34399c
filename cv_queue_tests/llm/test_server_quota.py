"""The local server's rate limits behave like a provider's: per key, per minute, refilled continuously, with the
real headers, and read by the real openai client."""

import math

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cv_queue.evaluation.llm.rate_headers import parse_duration, retry_after_hint, window_state
from cv_queue.llm_server import ServerOptions, ThreadedLLMServer, server_process
from cv_queue.llm_server.quota import Quotas, go_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refill_continuously_and_refusals_say_when() -> None:
    clock = FakeClock()
    quotas = Quotas(requests_per_minute=60, clock=clock)
    assert all(quotas.charge("k", 10).admitted for _ in range(60))  # a whole minute's burst
    refused = quotas.charge("k", 10)
    assert not refused.admitted
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert float(refused.headers["retry-after-ms"]) == 1000  # one request a second refills
    assert retry_after_hint(refused.headers) == pytest.approx(1.0)
    assert parse_duration(refused.headers["x-ratelimit-reset-requests"]) == 60.0  # whole again in a minute
    clock.now += 1.0
    assert quotas.charge("k", 10).admitted
    assert quotas.charge("other-key", 10).admitted  # every key has its own limits
    assert quotas.snapshot()["refused"] == {"k": 1}


def test_tokens_are_charged_on_arrival_and_a_request_over_the_whole_minute_is_refused_without_a_wait() -> None:
    clock = FakeClock()
    quotas = Quotas(tokens_per_minute=6000, clock=clock)
    assert quotas.charge("k", 5000).admitted
    refused = quotas.charge("k", 2000)  # 1,000 left: 1,000 more refill in 10 s
    assert not refused.admitted and float(refused.headers["retry-after-ms"]) == 10_000
    assert window_state(refused.headers, "tokens").remaining == 1000
    too_large = quotas.charge("k", 7000)
    assert not too_large.admitted and "retry-after" not in too_large.headers
    assert "Request too large" in too_large.message


@given(st.lists(st.tuples(st.floats(0, 30), st.integers(0, 3000)), max_size=60))
def test_never_more_than_the_limit_in_any_minute(steps: list[tuple[float, int]]) -> None:
    clock = FakeClock()
    quotas = Quotas(requests_per_minute=20, tokens_per_minute=10_000, clock=clock)
    admitted: list[tuple[float, int]] = []
    for wait, tokens in steps:
        clock.now += wait
        if quotas.charge("k", tokens).admitted:
            admitted.append((clock.now, tokens))
    for start, _ in admitted:
        window = [t for at, t in admitted if start <= at < start + 60]
        # A bucket of a minute's capacity, refilled at capacity/60 per second: at most two minutes' worth in any
        # 60 s (a full bucket, then a minute of refill).
        assert len(window) <= 40 and sum(window) <= 20_000


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "250ms"), (1.0, "1s"), (59.2, "1m0s"), (360, "6m0s"),
                                               (3723, "1h2m3s"), (0, "0ms")])
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(math.ceil(seconds) if seconds >= 1 else seconds, abs=1e-3)


def test_the_openai_client_gets_429_with_the_headers_and_a_limited_success_carries_them() -> None:
    with ThreadedLLMServer(ServerOptions(requests_per_minute=2)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="key-a", max_retries=0, timeout=10)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "Evaluate."}], max_tokens=50)
            assert raw.headers["x-ratelimit-limit-requests"] == "2"
            assert raw.headers["x-ratelimit-remaining-requests"] == "1"
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Evaluate."}])
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Evaluate."}])
        finally:
            client.close()
        assert 0 < retry_after_hint(caught.value.response.headers) <= 30
        stats = server.stats()
    assert stats["outcomes"] == {"ok": 2, "rate_limited": 1}
    assert stats["quota"]["refused"] == {"key-a": 1}


def test_the_command_line_takes_limits_and_refuses_nonsense() -> None:
    with server_process("--rpm", "1", "--tpm", "100000") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=10)
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Evaluate."}])
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Evaluate."}])
        finally:
            client.close()
    with pytest.raises(RuntimeError, match="exited with code 2"), server_process("--rpm", "0"):
        pass
