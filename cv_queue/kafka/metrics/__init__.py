"""Prometheus metrics of workers and replays (prometheus-client, the process's default registry).

- `families`: every metric, with its name, labels and buckets;
- `recorder`: a worker's figures as plain numbers (its hot path), read by a collector at scrape time;
- `bound`: replay's and the LLM usage's prometheus-client children;
- `server`: `start_metrics_server`, the /metrics endpoint (with the depth gauges when given a connection);
- `depth`: the DLQ and parking-lot depth gauges, read on a thread of their own;
- `stats`: the counters a worker reports as progress and returns when it stops.

May import `fleet/`, `admin/`, `client/` and `wire/` (the depth gauges read the recorded DLQ layout and the lag);
never worker or replay, which both record through it.
"""

from cv_queue.kafka.metrics.bound import ReplayMetrics, count_llm_usage
from cv_queue.kafka.metrics.recorder import WorkerMetrics, worker_metrics
from cv_queue.kafka.metrics.server import MetricsServer, start_metrics_server

__all__ = ["MetricsServer", "ReplayMetrics", "WorkerMetrics", "count_llm_usage", "start_metrics_server",
           "worker_metrics"]
