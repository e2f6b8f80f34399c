"""A worker's figures as plain numbers, exported at scrape time by a collector in the default registry.

The hot path (per record and per job) is an integer increment or a bisect into a bucket list, on the worker's poll
thread, which alone writes them; a scrape reads them from the HTTP thread. A reading taken mid-update may be one
job behind in one series, which Prometheus tolerates; nothing is ever lost, as every update is made by one thread.
Workers of one slot in one process (tests run several) share that slot's figures, so its series stay unique.
"""

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from cv_queue.errors import CATEGORY_ORDER
from cv_queue.kafka.metrics.families import COMMIT_BUCKETS, JOB_BUCKETS, WORKER_FAMILIES
from cv_queue.kafka.metrics.stats import WorkerStats

TopicPartitionKey = tuple[str, int]
MetricFamily = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


class Histogram:
    """Counts per bucket (non-cumulative) and the sum; Prometheus's `le` buckets are built when scraped."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True)
class BudgetFigures:
    """A handler's budget as it stands (cv_queue.evaluation.llm.budget), read at scrape time."""

    model: str
    requests: int
    tokens: int
    share: float
    held: int
    rate_limited: int
    cost: float
    spend_window: float | None = None  # None: no spend limit
    spend_paused: bool = False


class WorkerMetrics:
    """One slot's figures. Get it with `worker_metrics(slot, sources)`."""

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self.consumed: dict[TopicPartitionKey, int] = {}
        self.lag: dict[TopicPartitionKey, int] = {}
        self.paused: dict[TopicPartitionKey, int] = {}
        self.map_bytes: dict[TopicPartitionKey, int] = {}
        self.skipped: dict[TopicPartitionKey, int] = {}
        self.succeeded = 0
        self.retried = dict.fromkeys(CATEGORY_ORDER, 0)
        self.dead_lettered = dict.fromkeys(CATEGORY_ORDER, 0)
        self.timed_out = 0
        self.handler_calls = 0
        self.handler_seconds = Histogram(JOB_BUCKETS)
        self.latency_seconds = Histogram(JOB_BUCKETS)
        self.running = 0
        self.in_flight = self.buffered = self.held_bytes = self.retries_waiting = self.abandoned = 0
        self.commits = self.aborts = 0
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.budget: Callable[[], BudgetFigures] | None = None  # set by a worker whose handler keeps a budget

    def add_sources(self, sources: Iterable[TopicPartitionKey]) -> None:
        for tp in sources:
            for figures in (self.consumed, self.lag, self.paused, self.map_bytes, self.skipped):
                figures.setdefault(tp, 0)

    def count_abort(self) -> None:
        self.aborts += 1

    def record_gauges(self, stats: WorkerStats) -> None:
        """Copy the worker's gauges (refreshed on its poll loop about once a second)."""
        self.in_flight = stats.in_flight
        self.buffered = stats.buffered
        self.held_bytes = stats.held_bytes
        self.retries_waiting = stats.waiting_retries
        self.abandoned = stats.abandoned_handlers

    def set_paused(self, paused: set[TopicPartitionKey]) -> None:
        for tp in self.paused:
            self.paused[tp] = 1 if tp in paused else 0

    def export(self, families: dict[str, MetricFamily]) -> None:
        slot = [self.slot]
        for name, value in (("cvq_jobs_succeeded_total", self.succeeded), ("cvq_jobs_timed_out_total", self.timed_out),
                            ("cvq_handler_calls_total", self.handler_calls), ("cvq_worker_running", self.running),
                            ("cvq_jobs_in_flight", self.in_flight), ("cvq_jobs_buffered", self.buffered),
                            ("cvq_held_bytes", self.held_bytes), ("cvq_retries_waiting", self.retries_waiting),
                            ("cvq_abandoned_handler_threads", self.abandoned),
                            ("cvq_transactions_committed_total", self.commits),
                            ("cvq_transactions_aborted_total", self.aborts)):
            families[name].add_metric(slot, value)
        for name, per_category in (("cvq_jobs_retried_total", self.retried),
                                   ("cvq_jobs_dead_lettered_total", self.dead_lettered)):
            for category, value in list(per_category.items()):
                families[name].add_metric([self.slot, category.value], value)
        for name, per_source in (("cvq_records_consumed_total", self.consumed), ("cvq_consumer_lag", self.lag),
                                 ("cvq_partition_paused", self.paused), ("cvq_offset_map_bytes", self.map_bytes),
                                 ("cvq_records_skipped_total", self.skipped)):
            for (topic, partition), value in list(per_source.items()):
                families[name].add_metric([self.slot, topic, str(partition)], value)
        if self.budget is not None:
            self._export_budget(self.budget(), families)
        for name, histogram in (("cvq_handler_duration_seconds", self.handler_seconds),
                                ("cvq_job_latency_seconds", self.latency_seconds),
                                ("cvq_transaction_commit_duration_seconds", self.commit_seconds)):
            families[name].add_metric(slot, histogram.cumulative(), histogram.sum)  # type: ignore[call-arg]


    def _export_budget(self, figures: BudgetFigures, families: dict[str, MetricFamily]) -> None:
        model = [self.slot, figures.model]
        families["cvq_llm_budget_used_total"].add_metric([*model, "requests"], figures.requests)
        families["cvq_llm_budget_used_total"].add_metric([*model, "tokens"], figures.tokens)
        for name, value in (("cvq_llm_budget_share", figures.share), ("cvq_llm_calls_held_total", figures.held),
                            ("cvq_llm_rate_limited_total", figures.rate_limited),
                            ("cvq_llm_cost_total", figures.cost)):
            families[name].add_metric(model, value)
        if figures.spend_window is not None:
            families["cvq_llm_spend_window"].add_metric(model, figures.spend_window)
            families["cvq_llm_spend_paused"].add_metric(model, 1 if figures.spend_paused else 0)


_by_slot: dict[str, WorkerMetrics] = {}
_lock = threading.Lock()


def worker_metrics(slot: str, sources: Iterable[TopicPartitionKey] = ()) -> WorkerMetrics:
    """The figures of `slot` in this process, with a series for each of `sources` (topic, partition)."""
    with _lock:
        metrics = _by_slot.get(slot)
        if metrics is None:
            metrics = _by_slot[slot] = WorkerMetrics(slot)
        metrics.add_sources(sources)
        return metrics


class WorkerCollector(Collector):
    """Reads every slot's figures when the registry is scraped."""

    def collect(self) -> Iterator[MetricFamily]:
        kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}
        families = {f.name: kinds[f.kind](f.name, f.help, labels=f.labels) for f in WORKER_FAMILIES.values()}
        with _lock:
            slots = list(_by_slot.values())
        for metrics in slots:
            metrics.export(families)
        yield from families.values()


REGISTRY.register(WorkerCollector())
