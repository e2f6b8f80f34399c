"""Metric children bound to their labels once, so that recording on the hot path is a single `inc`/`observe`.

A worker binds its slot's children when it is built (the label lookup formats and hashes strings: done per job it
would cost more than the no-op job itself); replay binds one child per category and outcome.
"""

from collections.abc import Iterable

from prometheus_client.metrics import Counter, Gauge

from cv_queue.errors import ErrorCategory
from cv_queue.kafka.metrics import families as f
from cv_queue.kafka.stats import WorkerStats
from cv_queue.messages import ModelUsage

TopicPartitionKey = tuple[str, int]


class WorkerMetrics:
    """One worker's children: its slot, each of its source partitions, each failure category."""

    def __init__(self, slot: str, sources: Iterable[TopicPartitionKey]) -> None:
        self.slot = slot
        sources = list(sources)
        self.consumed: dict[TopicPartitionKey, Counter] = self._per_source(f.RECORDS_CONSUMED, sources)
        self.lag: dict[TopicPartitionKey, Gauge] = self._per_source(f.CONSUMER_LAG, sources)
        self.paused: dict[TopicPartitionKey, Gauge] = self._per_source(f.PARTITION_PAUSED, sources)
        self.succeeded = f.JOBS_SUCCEEDED.labels(slot)
        self.retried = {c: f.JOBS_RETRIED.labels(slot, c.value) for c in ErrorCategory}
        self.dead_lettered = {c: f.JOBS_DEAD_LETTERED.labels(slot, c.value) for c in ErrorCategory}
        self.timed_out = f.JOBS_TIMED_OUT.labels(slot)
        self.handler_calls = f.HANDLER_CALLS.labels(slot)
        self.handler_seconds = f.HANDLER_DURATION.labels(slot)
        self.latency_seconds = f.JOB_LATENCY.labels(slot)
        self.running = f.WORKER_RUNNING.labels(slot)
        self.in_flight = f.IN_FLIGHT.labels(slot)
        self.buffered = f.BUFFERED.labels(slot)
        self.held_bytes = f.HELD_BYTES.labels(slot)
        self.retries_waiting = f.RETRIES_WAITING.labels(slot)
        self.abandoned = f.ABANDONED_HANDLERS.labels(slot)
        self.commits = f.TRANSACTIONS_COMMITTED.labels(slot)
        self.aborts = f.TRANSACTIONS_ABORTED.labels(slot)
        self.commit_seconds = f.COMMIT_DURATION.labels(slot)

    def _per_source(self, metric: Counter | Gauge, sources: list[TopicPartitionKey]) -> dict:
        return {(topic, partition): metric.labels(self.slot, topic, str(partition)) for topic, partition in sources}

    def record_gauges(self, stats: WorkerStats) -> None:
        """Copy the worker's gauges (refreshed on its poll loop about once a second)."""
        self.in_flight.set(stats.in_flight)
        self.buffered.set(stats.buffered)
        self.held_bytes.set(stats.held_bytes)
        self.retries_waiting.set(stats.waiting_retries)
        self.abandoned.set(stats.abandoned_handlers)

    def set_paused(self, paused: set[TopicPartitionKey]) -> None:
        """Called when the paused set changes (rarely), not per job."""
        for tp, gauge in self.paused.items():
            gauge.set(1 if tp in paused else 0)


class ReplayMetrics:
    """Replayed and parked letters by category, counted once their transaction committed."""

    def __init__(self) -> None:
        self.replayed = {c: f.DLQ_REPLAYED.labels(c.value) for c in ErrorCategory}
        self.parked = {c: f.DLQ_PARKED.labels(c.value) for c in ErrorCategory}


def count_llm_usage(usage: ModelUsage) -> None:
    """Tokens and calls of one successful LLM evaluation. Per LLM job (~1 s of work), so the lookup is cheap."""
    f.LLM_TOKENS.labels(usage.model, "prompt").inc(usage.prompt_tokens)
    f.LLM_TOKENS.labels(usage.model, "completion").inc(usage.completion_tokens)
    f.LLM_REQUESTS.labels(usage.model).inc(usage.calls)
