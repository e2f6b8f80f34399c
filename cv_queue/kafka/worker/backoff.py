"""Retry delays: the pure maths for the retry topic, and the tenacity policy for in-process retries.

Retry-topic delay for delivery attempt n (n = 1 after the first failed delivery):
    base * multiplier**(n-1), capped at max_delay, then scaled by a uniform factor in [1-j, 1+j]
    and capped again. A rate-limited failure never waits less than the retry-after it was given.
"""

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from cv_queue.errors import ErrorCategory, RateLimitedError
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.settings import RetrySettings

T = TypeVar("T")


def nominal_delay_ms(attempt: int, settings: RetrySettings) -> float:
    """The un-jittered delay after `attempt` failed deliveries (attempt >= 1)."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    # The exponent is capped: a job throttled a thousand times (cvq.throttles) must not overflow the float.
    return min(settings.base_delay_ms * settings.multiplier ** min(attempt - 1, 64), settings.max_delay_ms)


def delay_bounds_ms(attempt: int, settings: RetrySettings) -> tuple[float, float]:
    """The closed interval a jittered delay falls in."""
    nominal = nominal_delay_ms(attempt, settings)
    return nominal * (1 - settings.jitter), min(nominal * (1 + settings.jitter), settings.max_delay_ms)


def retry_delay_ms(
    attempt: int,
    settings: RetrySettings,
    rng: random.Random | None = None,
    retry_after_s: float | None = None,
) -> int:
    """A jittered delay for the retry topic; honours a rate limiter's retry-after as a floor."""
    low, high = delay_bounds_ms(attempt, settings)
    delay = (rng or random).uniform(low, high)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s * 1000.0)
    return int(delay)


class InProcessRetry:
    """Calls a function with the tenacity policy below, but enters tenacity only once a call has failed.

    Nearly every call succeeds at once; tenacity's bookkeeping on each of them cost a sixth of a worker's
    CPU in the no-op benchmark. The first failure is handed to tenacity as its own first attempt, so the
    number of tries and the waits between them are exactly the policy's.
    """

    def __init__(self, settings: RetrySettings, classifier: ErrorClassifier) -> None:
        self._retrying = inprocess_retrying(settings, classifier)

    def __call__(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            first: BaseException | None = exc

        def attempt() -> T:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return fn()

        return self._retrying(attempt)


def _policy(settings: RetrySettings, classifier: ErrorClassifier) -> dict[str, Any]:
    """Tenacity policy for short blips: a few quick, jittered tries for transient errors only.

    Rate-limited errors skip it: a limiter that says "wait" is better served by the delayed retry
    topic than by hammering it again within the same second.
    """

    def is_blip(exc: BaseException) -> bool:
        # A BaseException (CancelledError, SystemExit, KeyboardInterrupt) is not a blip: it ends the delivery.
        return (isinstance(exc, Exception) and not isinstance(exc, RateLimitedError)
                and classifier.classify(exc) == ErrorCategory.TRANSIENT)

    return {
        "stop": stop_after_attempt(settings.inprocess_tries) | stop_after_delay(settings.inprocess_max_total_ms / 1000),
        "wait": wait_exponential_jitter(
            multiplier=settings.inprocess_initial_ms / 1000,
            max=settings.inprocess_max_ms / 1000,
            jitter=settings.inprocess_initial_ms / 1000,
        ),
        "retry": retry_if_exception(is_blip),
        "reraise": True,
    }


def inprocess_retrying(settings: RetrySettings, classifier: ErrorClassifier) -> Retrying:
    return Retrying(**_policy(settings, classifier))


class AsyncInProcessRetry:
    """InProcessRetry for coroutines: the same policy, waits on the event loop instead of sleeping a thread."""

    def __init__(self, settings: RetrySettings, classifier: ErrorClassifier) -> None:
        self._retrying = AsyncRetrying(**_policy(settings, classifier))

    async def __call__(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except Exception as exc:
            first: BaseException | None = exc

        async def attempt() -> T:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return await fn()

        return await self._retrying(attempt)
