"""A worker's share of a model's rate limits at the provider: what lets a fleet fill its quota without 429 storms.

Each worker keeps two buckets (requests and tokens per second) filled at

    limit / 60 / live workers * factor

- The share (1 / live workers) follows the presence group: when workers leave, the survivors take the freed budget
  within `budget.fleet_refresh_s`; when more join, each takes less.
- The factor is additive-increase, multiplicative-decrease: it grows by `increase_per_s` each second up to 1 (the
  whole share), and a 429, or the provider's own `x-ratelimit-remaining-*` falling under `low_remaining` of its
  `x-ratelimit-limit-*`, multiplies it by `decrease` (at most once a second: a burst of refusals is one signal).
  The provider is the one place that sees the whole fleet, and other clients of the same key.
- A 429's Retry-After holds every call of this worker until it has passed (at most `max_hold_s`; the refused job
  itself waits all of it on the retry topic), limits configured or not. The factor does not grow back during a hold.

A call reserves one request and its estimated tokens before it starts (`try_reserve`); when the usage comes back the
tokens are settled to what the provider counted. A bucket may go into debt for one call larger than the bucket
itself (a long prompt): the long-run rate stays exact, and no call is refused for ever. Thread-safe (one lock):
the worker's event loop spends it, the thread that counts the fleet resizes it, and the threaded evaluator's
handler threads share one.
"""

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cv_queue.evaluation.llm.rate_headers import window_state
from cv_queue.quota_settings import BudgetTuning, ModelRateLimits


class _Bucket:
    """Amounts per second at a rate that may change; holds `burst_s` seconds of it."""

    def __init__(self, rate_per_s: float, burst_s: float, now: float) -> None:
        self.burst_s = burst_s
        self.rate_per_s = rate_per_s
        self.level = self.capacity
        self.at = now

    @property
    def capacity(self) -> float:
        return self.rate_per_s * self.burst_s

    def refill(self, now: float, rate_per_s: float) -> None:
        # The time since the last refill is paid at the old rate; the new one applies from now.
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate_per_s)
        self.rate_per_s = rate_per_s
        self.level = min(self.level, self.capacity)
        self.at = now

    def wait_s(self, amount: float) -> float:
        """0 when `amount` may be taken now (a bucket at least as full as min(amount, capacity)), else how long
        until it may."""
        needed = min(amount, self.capacity)
        if self.level >= needed:
            return 0.0
        return (needed - self.level) / self.rate_per_s if self.rate_per_s > 0 else math.inf


@dataclass(frozen=True, slots=True)
class Reservation:
    tokens: int


class ProviderBudget:
    """One model's limits as this worker's budget (see the module docstring)."""

    def __init__(self, limits: ModelRateLimits, tuning: BudgetTuning,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.tuning = tuning
        self._clock = clock
        now = clock()
        self.fleet_size = 1
        self.factor = 1.0
        self._adjusted_at = now
        self._decreased_at = -math.inf
        self.hold_until = 0.0
        self._requests = _Bucket(self._rate(limits.requests_per_minute), tuning.burst_s, now) \
            if limits.requests_per_minute else None
        self._tokens = _Bucket(self._rate(limits.tokens_per_minute), tuning.burst_s, now) \
            if limits.tokens_per_minute else None
        self.granted_requests = 0
        self.granted_tokens = 0
        self.refusals = 0
        self._lock = threading.Lock()

    @property
    def limited(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def _rate(self, per_minute: float | None) -> float:
        return (per_minute or 0.0) / 60.0 / self.fleet_size * self.factor

    def _advance(self, now: float) -> None:
        grown_s = max(0.0, now - max(self._adjusted_at, self.hold_until))  # not while held: a hold is no success
        self.factor = min(1.0, self.factor + self.tuning.increase_per_s * grown_s)
        self._adjusted_at = now
        if self._requests is not None:
            self._requests.refill(now, self._rate(self.limits.requests_per_minute))
        if self._tokens is not None:
            self._tokens.refill(now, self._rate(self.limits.tokens_per_minute))

    def set_fleet_size(self, live_workers: int) -> None:
        """The live workers sharing the limits (this one included)."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self.fleet_size = max(1, live_workers)
            self._advance(now)

    def try_reserve(self, tokens: int) -> tuple[Reservation | None, float]:
        """(a reservation, 0) when a call of `tokens` may start now; (None, seconds to wait) when not."""
        with self._lock:
            return self._try_reserve(tokens)

    def _try_reserve(self, tokens: int) -> tuple[Reservation | None, float]:
        now = self._clock()
        if now < self.hold_until:
            return None, self.hold_until - now
        self._advance(now)
        wait = max(self._requests.wait_s(1) if self._requests is not None else 0.0,
                   self._tokens.wait_s(tokens) if self._tokens is not None else 0.0)
        if wait > 0:
            return None, wait
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens
        return Reservation(tokens), 0.0

    def settle(self, reservation: Reservation, counted_tokens: int) -> None:
        """The call is over and the provider counted `counted_tokens`: the difference goes back (or is taken)."""
        with self._lock:
            self._settle(reservation, counted_tokens)
            # Counted once the call was made (never taken back: these feed counters).
            self.granted_requests += 1
            self.granted_tokens += counted_tokens

    def _settle(self, reservation: Reservation, counted_tokens: int) -> None:
        if self._tokens is not None:
            self._tokens.level += reservation.tokens - counted_tokens

    def release(self, reservation: Reservation) -> None:
        """A reservation whose call never started: both buckets get it back."""
        with self._lock:
            if self._requests is not None:
                self._requests.level += 1
            self._settle(reservation, 0)

    def refused(self, retry_after_s: float | None) -> None:
        """A 429: slow down, and hold every call until its Retry-After has passed."""
        with self._lock:
            now = self._clock()
            self.refusals += 1
            self._decrease(now)
            if retry_after_s is not None and retry_after_s > 0:  # inf and absurd values too: capped
                self.hold_until = max(self.hold_until, now + min(retry_after_s, self.tuning.max_hold_s))

    def observe(self, headers: Mapping[str, str]) -> None:
        """A response's x-ratelimit-* headers: a window nearly spent is a reason to slow down before a 429."""
        for kind in ("requests", "tokens"):
            state = window_state(headers, kind)
            nearly_spent = state.limit and state.remaining is not None and \
                state.remaining < self.tuning.low_remaining * state.limit
            if nearly_spent:
                with self._lock:
                    self._decrease(self._clock())
                return

    def _decrease(self, now: float) -> None:
        if now - self._decreased_at < 1.0:
            return
        self._advance(now)
        self._decreased_at = now
        self.factor = max(self.tuning.min_factor, self.factor * self.tuning.decrease)
        self._advance(now)
