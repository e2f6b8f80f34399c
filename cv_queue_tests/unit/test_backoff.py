"""Retry delays: exponential growth, the cap, jitter bounds, retry-after floors, and the in-process layer."""

import random

import pytest

from cv_queue.errors import PermanentJobError, RateLimitedError, TransientJobError
from cv_queue.kafka.worker.backoff import delay_bounds_ms, inprocess_retrying, nominal_delay_ms, retry_delay_ms
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.settings import RetrySettings

SETTINGS = RetrySettings(base_delay_ms=1000, multiplier=2.0, max_delay_ms=30_000, jitter=0.2)


def test_nominal_delays_grow_exponentially_then_cap():
    delays = [nominal_delay_ms(n, SETTINGS) for n in range(1, 8)]
    assert delays[:5] == [1000, 2000, 4000, 8000, 16000]
    assert delays[5:] == [30_000, 30_000]
    with pytest.raises(ValueError):
        nominal_delay_ms(0, SETTINGS)


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 9])
def test_jittered_delays_stay_within_bounds_and_actually_vary(attempt):
    rng = random.Random(attempt)
    low, high = delay_bounds_ms(attempt, SETTINGS)
    samples = [retry_delay_ms(attempt, SETTINGS, rng) for _ in range(2000)]
    assert all(int(low) <= s <= high for s in samples)
    assert high <= SETTINGS.max_delay_ms
    nominal = nominal_delay_ms(attempt, SETTINGS)
    if high > low:  # below the cap jitter spreads both ways around the nominal delay
        assert min(samples) < nominal < max(samples) or nominal == SETTINGS.max_delay_ms
        assert max(samples) - min(samples) > 0.5 * (high - low)


def test_zero_jitter_is_deterministic():
    flat = SETTINGS.model_copy(update={"jitter": 0.0})
    assert {retry_delay_ms(3, flat, random.Random(i)) for i in range(50)} == {4000}


def test_retry_after_is_a_floor():
    assert retry_delay_ms(1, SETTINGS, random.Random(0), retry_after_s=10) >= 10_000
    assert retry_delay_ms(4, SETTINGS, random.Random(0), retry_after_s=0.001) >= delay_bounds_ms(4, SETTINGS)[0] - 1


def _counting(exc_factory, fail_times):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= fail_times:
            raise exc_factory()
        return "ok"

    return fn, calls


FAST = RetrySettings(inprocess_tries=3, inprocess_initial_ms=1, inprocess_max_ms=5, inprocess_max_total_ms=5000)


def test_inprocess_layer_retries_transient_blips():
    fn, calls = _counting(lambda: TransientJobError("blip"), 2)
    assert inprocess_retrying(FAST, ErrorClassifier())(fn) == "ok"
    assert calls["n"] == 3


def test_inprocess_layer_gives_up_after_its_tries():
    fn, calls = _counting(lambda: TimeoutError("slow"), 99)
    with pytest.raises(TimeoutError):
        inprocess_retrying(FAST, ErrorClassifier())(fn)
    assert calls["n"] == FAST.inprocess_tries


@pytest.mark.parametrize("exc", [lambda: PermanentJobError("no"), lambda: RateLimitedError("slow down", 3),
                                 lambda: KeyError("bug")])
def test_inprocess_layer_leaves_non_blips_alone(exc):
    fn, calls = _counting(exc, 99)
    with pytest.raises(Exception):  # noqa: B017 - the original exception, whatever its type
        inprocess_retrying(FAST, ErrorClassifier())(fn)
    assert calls["n"] == 1
