"""Where a finished delivery goes: its result, a retry record, or a dead letter; always exactly one output.

- success: the result, unless it is too large for the results topic (then a permanent dead letter);
- a transient failure with attempts left: a retry record due after the backoff;
- a rate-limited failure (a 429) is not a failure of the job: a retry record due when the provider said (its
  Retry-After; else the backoff by throttle count), counted in `cvq.throttles`, not in attempts. Only a wait that
  would end past retry.rate_limit_budget_s from the first refusal (an absurd Retry-After included) dead-letters it,
  as rate_limited with the asked-for wait in a header;
- everything else: a dead letter, in the DLQ partition of its category.
Every output is sized against its topic (see wire/fit.py) before it is handed to a transaction.
"""

import math
import random
import time
from datetime import datetime

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory
from cv_queue.kafka.metrics import WorkerMetrics, worker_metrics
from cv_queue.kafka.metrics.stats import WorkerStats
from cv_queue.kafka.wire.delivery import Delivery
from cv_queue.kafka.wire.envelope import dead_letter_record, now_ms, retry_record
from cv_queue.kafka.wire.fit import OutputLimits, shrink_dead_letter, trim_error_detail
from cv_queue.kafka.wire.records import Failure, OutputRecord
from cv_queue.kafka.worker.backoff import retry_delay_ms
from cv_queue.settings import QueueSettings

RESULT_TOO_LARGE_CLASS = "cv_queue.ResultTooLarge"


class Router:
    def __init__(self, settings: QueueSettings, worker_id: str, limits: OutputLimits, stats: WorkerStats,
                 metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or worker_metrics(stats.slot)
        self.names = settings.topic_names
        self.worker_id = worker_id
        self.limits = limits
        self.stats = stats
        self._rng = random.Random()
        self._max_result = min(settings.worker.max_result_bytes, self.limits.limit(self.names.results))

    def success(self, delivery: Delivery, result: bytes, calls: int,
                created_at: datetime | None = None) -> OutputRecord:
        """The result record; `created_at` (the job's) feeds the end-to-end latency histogram."""
        out = OutputRecord(topic=self.names.results, key=delivery.source.key, value=result, headers=[])
        if out.size <= self._max_result:
            self.stats.succeeded += 1
            self.metrics.succeeded += 1
            if created_at is not None:
                self.metrics.latency_seconds.observe(time.time() - created_at.timestamp())
            return out
        # A result too large to produce would fail every transaction that carries it.
        failure = Failure(ErrorCategory.PERMANENT, RESULT_TOO_LARGE_CLASS,
                          f"the handler's result is {len(result)} bytes, over the {self._max_result}-byte limit "
                          "(max_result_bytes, or the results topic's max.message.bytes)", "")
        return self.failure(delivery, failure, calls)

    def failure(self, delivery: Delivery, failure: Failure, calls: int) -> OutputRecord:
        """The output of a delivery whose handler failed after `calls` calls in this delivery."""
        total_calls = delivery.handler_calls + calls
        if failure.category == ErrorCategory.RATE_LIMITED:
            return self._throttled(delivery, failure, total_calls)
        attempts = delivery.attempts + 1
        retry = self.settings.retry
        if not (failure.category.retryable and attempts < retry.max_attempts):
            return self.dead_letter(delivery, failure, attempts, total_calls)
        failed_at = now_ms()
        due = failed_at + retry_delay_ms(attempts, retry, self._rng)
        return self._retry(delivery, failure, attempts, total_calls, due, failed_at)

    def _throttled(self, delivery: Delivery, failure: Failure, calls: int) -> OutputRecord:
        """A job a rate limiter refused: back through the retry topic when the provider said, within the budget."""
        retry = self.settings.retry
        failed_at = now_ms()
        since = delivery.throttled_since_ms or failed_at
        throttles = delivery.throttles + 1
        asked_s = failure.retry_after_s
        if not asked_s:  # no hint, or "now" (0, a date in the past): the backoff, so that nothing spins
            wait_ms = float(retry_delay_ms(throttles, retry, self._rng))
        else:
            # Spread a fleet refused at the same moment: the same Retry-After would bring every job back at once.
            wait_ms = asked_s * 1000.0 * (1 + self._rng.uniform(0, retry.jitter))
        budget_end = since + retry.rate_limit_budget_s * 1000
        if math.isinf(wait_ms) or failed_at + wait_ms > budget_end:
            return self._over_rate_limit_budget(delivery, failure, calls, asked_s, since, throttles)
        return self._retry(delivery, failure, delivery.attempts, calls, failed_at + int(wait_ms), failed_at,
                           throttles, since)

    def _retry(self, delivery: Delivery, failure: Failure, attempts: int, total_calls: int, due: int,
               failed_at: int, throttles: int = 0, since: int = 0) -> OutputRecord:
        out = retry_record(delivery, failure, attempts, total_calls, self.worker_id, self.names.retry, due, failed_at,
                           throttles or delivery.throttles, since or delivery.throttled_since_ms)
        limit = self.limits.limit(self.names.retry)
        if out.size > limit:
            out = trim_error_detail(out)
        if out.size > limit:
            # The job itself (with its own headers) is too large for the retry topic: only the DLQ has room.
            oversize = Failure(failure.category, failure.error_class,
                               f"{failure.message} [not retried: {out.size} bytes do not fit the retry topic]",
                               failure.stacktrace)
            return self.dead_letter(delivery, oversize, attempts, total_calls)
        self.stats.retried += 1
        self.metrics.retried[failure.category] += 1
        return out

    def _over_rate_limit_budget(self, delivery: Delivery, failure: Failure, calls: int, asked_s: float | None,
                                since: int, throttles: int) -> OutputRecord:
        budget_s = self.settings.retry.rate_limit_budget_s
        asked = f"Retry-After {asked_s:g}s" if asked_s is not None else "the next wait"
        over = Failure(
            ErrorCategory.RATE_LIMITED, failure.error_class,
            f"{failure.message} [rate limited {throttles} time(s) since {since} ms; {asked} would end past "
            f"retry.rate_limit_budget_s={budget_s:g}; dead-lettered instead of waiting]",
            failure.stacktrace)
        out = self.dead_letter(delivery, over, delivery.attempts, calls, throttles, since)
        if asked_s is not None:
            out.headers.append((h.RETRY_AFTER_REQUESTED, h.str_value(f"{asked_s:g}")))
        return out

    def dead_letter(self, delivery: Delivery, failure: Failure, attempts: int, calls: int, throttles: int = 0,
                    throttled_since_ms: int = 0) -> OutputRecord:
        self.stats.dead_lettered += 1
        self.metrics.dead_lettered[failure.category] += 1
        if failure.category == ErrorCategory.INVALID_PAYLOAD:
            self.stats.invalid += 1
        out = dead_letter_record(delivery, failure, attempts, calls, self.worker_id, self.names.dlq,
                                 self.settings.dlq_partition(failure.category, delivery.source.key), now_ms(),
                                 throttles or delivery.throttles, throttled_since_ms or delivery.throttled_since_ms)
        return shrink_dead_letter(out, self.limits.limit(self.names.dlq))
