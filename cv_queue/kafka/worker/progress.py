"""What a worker reports: its gauges, brought up to date about once a second, and a progress line when it changed.

The worker's loop calls `refresh` and `report`; neither touches a record, so neither can affect what is committed.
"""

import contextlib
import logging
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer

from cv_queue.kafka.metrics import WorkerMetrics
from cv_queue.kafka.metrics.stats import WorkerStats
from cv_queue.kafka.worker.resume import partition_lags
from cv_queue.kafka.worker.tracker import PartitionTracker

log = logging.getLogger("cv_queue.worker")

IDLE_REPORT_EVERY = 6  # an idle worker reports every 6th progress interval instead of every one


class ProgressReporter:
    """Copies the worker's figures into its stats and metrics (`refresh`) and reports them (`report`)."""

    def __init__(self, stats: WorkerStats, metrics: WorkerMetrics,
                 on_progress: Callable[[WorkerStats], None] | None) -> None:
        self.stats = stats
        self.metrics = metrics
        self.on_progress = on_progress
        self._last_summary = ""
        self._quiet_reports = 0

    def refresh(self, consumer: Consumer | None, trackers: Mapping[tuple[str, int], PartitionTracker],
                in_flight: int, buffered: int, waiting_retries: int, paused: int, abandoned: int) -> None:
        """Gauges from the worker's parts; lag from the consumer's cached watermarks (skipped once it is closed)."""
        stats = self.stats
        stats.in_flight, stats.buffered, stats.waiting_retries = in_flight, buffered, waiting_retries
        stats.held_bytes = sum(t.open_bytes for t in trackers.values())
        stats.paused, stats.abandoned_handlers = paused, abandoned
        if consumer is not None:
            with contextlib.suppress(RuntimeError):  # consumer already closed
                lags = partition_lags(consumer, trackers)
                self.metrics.lag.update(lags)
                stats.lag = sum(lags.values())
        self.metrics.record_gauges(stats)

    def report(self) -> None:
        """Report progress when something changed, and otherwise every IDLE_REPORT_EVERY intervals."""
        summary = self.stats.summary()
        self._quiet_reports = 0 if summary != self._last_summary else self._quiet_reports + 1
        if self._quiet_reports % IDLE_REPORT_EVERY:
            return
        self._last_summary = summary
        if self.on_progress is not None:
            self.on_progress(self.stats)
        else:
            log.info("%s", summary)
