"""A Prometheus endpoint for the length of a Dagster run: worker runs on a port per slot, replay runs on one port.

The endpoint is a convenience beside the run's real work, so nothing about it may fail the run: metrics turned
off, the metrics module missing or a port already taken (say, a `cv-queue worker` on the same machine) each
leave a line in the run's log and the run goes on.
"""

import contextlib
import logging
from collections.abc import Iterator

from cv_queue.settings import KafkaConnection, MetricsSettings, QueueSettings, Slot


def worker_metrics_port(settings: QueueSettings, slot: Slot) -> int:
    """The documented layout: base + the slot's index in the tiling (0-1 on base, 2-3 on base + 1, ...)."""
    return settings.metrics.worker_port_base + slot.partitions[0] // settings.topics.partitions_per_worker


@contextlib.contextmanager
def metrics_endpoint(metrics: MetricsSettings, port: int, log: logging.Logger, conn: KafkaConnection | None = None,
                     settings: QueueSettings | None = None) -> Iterator[int | None]:
    """Serve /metrics on `port` while the block runs; yields the port, or None when nothing is served.

    Given the connection and settings, the endpoint also exports DLQ and parking-lot depth (worker runs do, since
    they run all the time; the alert rules take the max across endpoints)."""
    if not metrics.enabled:
        yield None
        return
    try:
        from cv_queue.kafka.metrics import start_metrics_server  # imported late: optional for the run
    except ImportError as exc:
        log.warning(f"metrics unavailable: {exc}")
        yield None
        return
    try:
        server = start_metrics_server(port, metrics.host, conn, settings)
    except OSError as exc:
        log.warning(f"metrics port {metrics.host}:{port} is not available ({exc}); this run serves no metrics")
        yield None
        return
    log.info(f"serving Prometheus metrics on http://{metrics.host}:{port}/metrics")
    try:
        yield port
    finally:
        server.close()
