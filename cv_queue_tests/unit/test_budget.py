"""A worker's budget of the provider's quota, alone with a fake clock: never over its share, resized with the
fleet, slowed by 429s and nearly-spent windows (AIMD), held by Retry-After, and never stuck on a large call."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cv_queue.evaluation.llm.budget import ProviderBudget
from cv_queue.quota_settings import BudgetTuning, ModelRateLimits

TUNING = BudgetTuning()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _budget(rpm: float | None = None, tpm: float | None = None, tuning: BudgetTuning = TUNING
            ) -> tuple[ProviderBudget, Clock]:
    clock = Clock()
    return ProviderBudget(ModelRateLimits(requests_per_minute=rpm, tokens_per_minute=tpm), tuning, clock), clock


def _granted_over(budget: ProviderBudget, clock: Clock, seconds: float, tokens: int = 10, step: float = 0.01) -> int:
    granted = 0
    end = clock.now + seconds
    while clock.now < end:
        reservation, _ = budget.try_reserve(tokens)
        if reservation is not None:
            granted += 1
        else:
            clock.now += step
    return granted


@given(st.lists(st.tuples(st.floats(0, 3), st.integers(1, 5000)), min_size=1, max_size=200),
       st.integers(1, 8))
def test_never_more_than_the_share_plus_one_burst(steps: list[tuple[float, int]], fleet: int) -> None:
    budget, clock = _budget(rpm=120, tpm=60_000)
    budget.set_fleet_size(fleet)
    start = clock.now
    requests = tokens = 0
    largest = 0
    for wait, asked in steps:
        clock.now += wait
        reservation, _ = budget.try_reserve(asked)
        if reservation is not None:
            requests += 1
            tokens += asked
            largest = max(largest, asked)
    elapsed = clock.now - start
    burst = TUNING.burst_s
    assert requests <= (2 / fleet) * (elapsed + burst) + 1
    # A call larger than the bucket may put it in debt once: that call on top of the rate.
    assert tokens <= (1000 / fleet) * (elapsed + burst) + largest


def test_the_share_follows_the_fleet() -> None:
    budget, clock = _budget(rpm=600)  # 10 a second for the fleet
    budget.set_fleet_size(4)
    four = _granted_over(budget, clock, 20)
    budget.set_fleet_size(2)  # two workers left: the survivors take their budget
    two = _granted_over(budget, clock, 20)
    assert 45 <= four <= 57 and 95 <= two <= 107, (four, two)


def test_a_429_halves_the_rate_once_a_second_and_it_grows_back() -> None:
    budget, clock = _budget(rpm=600)
    budget.refused(None)
    budget.refused(None)  # the same burst of refusals: one signal
    assert budget.factor == pytest.approx(TUNING.decrease)
    clock.now += 1.0
    budget.refused(None)
    assert budget.factor == pytest.approx(min(1.0, TUNING.decrease + TUNING.increase_per_s) * TUNING.decrease)
    clock.now += 1 / TUNING.increase_per_s
    budget.try_reserve(1)
    assert budget.factor == 1.0
    for _ in range(200):
        clock.now += 1.0
        budget.refused(None)
    assert budget.factor == pytest.approx(TUNING.min_factor)


def test_a_retry_after_holds_every_call_limits_or_not() -> None:
    budget, clock = _budget()  # unlimited
    assert budget.try_reserve(10_000)[1] == 0
    budget.refused(7.5)
    reservation, wait = budget.try_reserve(1)
    assert reservation is None and wait == pytest.approx(7.5)
    clock.now += 7.5
    assert budget.try_reserve(1)[0] is not None


@pytest.mark.parametrize("asked", [1e12, float("inf"), 253402300799.0])
def test_an_absurd_retry_after_holds_the_worker_no_longer_than_max_hold_s(asked: float) -> None:
    budget, clock = _budget(rpm=600)
    budget.refused(asked)
    assert budget.try_reserve(1)[1] == pytest.approx(TUNING.max_hold_s)
    clock.now += TUNING.max_hold_s
    assert budget.try_reserve(1)[0] is not None


def test_the_rate_does_not_grow_back_while_held() -> None:
    budget, clock = _budget(rpm=600)
    budget.refused(30)
    clock.now += 30
    budget.try_reserve(1)
    assert budget.factor == pytest.approx(TUNING.decrease)  # thirty seconds of hold are no success


def test_a_nearly_spent_window_at_the_provider_slows_the_worker_before_any_429() -> None:
    budget, _ = _budget(rpm=600)
    budget.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "300"})
    assert budget.factor == 1.0
    budget.observe({"x-ratelimit-limit-tokens": "200000", "x-ratelimit-remaining-tokens": "900"})
    assert budget.factor == pytest.approx(TUNING.decrease)


def test_a_call_larger_than_the_bucket_runs_once_it_is_full_and_the_debt_is_paid_in_time() -> None:
    budget, clock = _budget(tpm=600)  # 10 tokens a second, a 20-token bucket
    reservation, _ = budget.try_reserve(500)
    assert reservation is not None  # never refused for ever
    _, wait = budget.try_reserve(10)
    assert wait == pytest.approx(49.0)  # 480 tokens of debt, then 10 more, at 10 a second
    clock.now += wait
    assert budget.try_reserve(10)[0] is not None


def test_settling_returns_what_the_provider_did_not_count() -> None:
    budget, clock = _budget(tpm=600)
    reservation, _ = budget.try_reserve(20)
    assert reservation is not None and budget.try_reserve(20)[0] is None
    budget.settle(reservation, 5)  # counted 5: 15 come back
    assert budget.try_reserve(15)[0] is not None
    assert (budget.granted_requests, budget.granted_tokens) == (1, 5)  # what calls used, once they were made
    released, _ = budget.try_reserve(1)
    assert released is None
    clock.now += 10
    released, _ = budget.try_reserve(20)
    assert released is not None
    budget.release(released)  # its call never started: everything back, nothing counted
    assert budget.try_reserve(20)[0] is not None
    assert (budget.granted_requests, budget.granted_tokens) == (1, 5)
