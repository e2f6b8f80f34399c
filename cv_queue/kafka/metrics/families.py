"""Every Prometheus metric cv-queue exports, in one place: names, help texts, labels and buckets.

Conventions: `cvq_` prefix, counters end in `_total` (prometheus-client adds it), durations are in seconds and
sizes in bytes. Labels: `slot` (a worker's partitions, "0-1"), `topic` and `partition` (a source partition of the
worker), `category` (an ErrorCategory value). The metrics live in the process's default registry: one worker or
one replay per process, as `cv-queue worker`, `cv-queue dlq replay` and every Dagster run are.

Depth figures (consumer lag, DLQ and parking-lot depth) are offset differences: a transactional write adds one
commit-marker offset per partition and transaction, so they are upper bounds on record counts, as in
`cv-queue status`.
"""

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

# No `_created` series: a scrape is a third shorter, and a restart already shows as a counter reset.
disable_created_metrics()

SLOT = ("slot",)
SOURCE = ("slot", "topic", "partition")

# Handler calls and end-to-end latency: a no-op handler lands in the first bucket, an LLM call in the seconds,
# and a job that waited for retries or a replay in the minutes; past 600 s it is +Inf.
JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# A transaction commit takes milliseconds on a healthy broker and up to COMMIT_TIMEOUT_S (60 s) on a sick one.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# ---------------------------------------------------------------- worker: records and jobs
RECORDS_CONSUMED = Counter("cvq_records_consumed_total", "Records consumed from the main and retry topics.",
                           SOURCE)
JOBS_SUCCEEDED = Counter("cvq_jobs_succeeded_total", "Jobs whose result was produced to the results topic.", SLOT)
JOBS_RETRIED = Counter("cvq_jobs_retried_total", "Failed deliveries sent to the retry topic, by category.",
                       ("slot", "category"))
JOBS_DEAD_LETTERED = Counter("cvq_jobs_dead_lettered_total", "Records dead-lettered, by category.",
                             ("slot", "category"))
JOBS_TIMED_OUT = Counter("cvq_jobs_timed_out_total", "Deliveries that exceeded job_timeout_s.", SLOT)
HANDLER_CALLS = Counter("cvq_handler_calls_total", "Handler calls, in-process retries and repairs included.", SLOT)
HANDLER_DURATION = Histogram("cvq_handler_duration_seconds",
                             "Time one delivery of a job spent in the handler (all its in-process tries).", SLOT,
                             buckets=JOB_BUCKETS)
JOB_LATENCY = Histogram("cvq_job_latency_seconds",
                        "End to end: from the job's created_at to its result being routed.", SLOT,
                        buckets=JOB_BUCKETS)

# ---------------------------------------------------------------- worker: what it holds
WORKER_RUNNING = Gauge("cvq_worker_running", "1 while the slot's worker runs, 0 once it stopped.", SLOT)
IN_FLIGHT = Gauge("cvq_jobs_in_flight", "Jobs running in a handler now.", SLOT)
BUFFERED = Gauge("cvq_jobs_buffered", "Jobs accepted but not yet started.", SLOT)
HELD_BYTES = Gauge("cvq_held_bytes", "Bytes held: records not yet settled plus outputs waiting for the watermark.",
                   SLOT)
RETRIES_WAITING = Gauge("cvq_retries_waiting", "Retry records held in memory until they are due.", SLOT)
ABANDONED_HANDLERS = Gauge("cvq_abandoned_handler_threads", "Handler threads still stuck in jobs that timed out.",
                           SLOT)
PARTITION_PAUSED = Gauge("cvq_partition_paused", "1 while the worker has this source partition paused.", SOURCE)
CONSUMER_LAG = Gauge("cvq_consumer_lag", "Records of the partition not yet committed by its worker.", SOURCE)

# ---------------------------------------------------------------- worker: transactions
TRANSACTIONS_COMMITTED = Counter("cvq_transactions_committed_total",
                                 "Transactions committed (outputs with their source offsets).", SLOT)
TRANSACTIONS_ABORTED = Counter("cvq_transactions_aborted_total",
                               "Transactions aborted (then redone, or given up on the way out).", SLOT)
COMMIT_DURATION = Histogram("cvq_transaction_commit_duration_seconds",
                            "Producing one transaction's outputs and committing it, retries included.", SLOT,
                            buckets=COMMIT_BUCKETS)

# ---------------------------------------------------------------- LLM usage (from results' usage)
LLM_TOKENS = Counter("cvq_llm_tokens_total",
                     "LLM tokens behind evaluations that produced an answer, by model and kind.", ("model", "kind"))
LLM_REQUESTS = Counter("cvq_llm_requests_total", "Chat-completion calls behind evaluations that produced an answer.",
                       ("model",))

# ---------------------------------------------------------------- dead letters
DLQ_REPLAYED = Counter("cvq_dlq_replayed_total", "Dead letters republished to the main topic, by category.",
                       ("category",))
DLQ_PARKED = Counter("cvq_dlq_parked_total", "Dead letters moved to the parking lot, by category.", ("category",))
DLQ_DEPTH = Gauge("cvq_dlq_depth", "Dead letters not yet replayed (end offset minus the replay group's offset).",
                  ("partition", "category"))
PARKED_DEPTH = Gauge("cvq_parked_depth", "Letters in the parking lot (offsets from the earliest retained to the end).",
                     ("partition",))

ALL: tuple[MetricWrapperBase, ...] = (
    RECORDS_CONSUMED, JOBS_SUCCEEDED, JOBS_RETRIED, JOBS_DEAD_LETTERED, JOBS_TIMED_OUT, HANDLER_CALLS,
    HANDLER_DURATION, JOB_LATENCY, WORKER_RUNNING, IN_FLIGHT, BUFFERED, HELD_BYTES, RETRIES_WAITING,
    ABANDONED_HANDLERS, PARTITION_PAUSED, CONSUMER_LAG, TRANSACTIONS_COMMITTED, TRANSACTIONS_ABORTED,
    COMMIT_DURATION, LLM_TOKENS, LLM_REQUESTS, DLQ_REPLAYED, DLQ_PARKED, DLQ_DEPTH, PARKED_DEPTH,
)


def sample_names() -> dict[str, tuple[str, ...]]:
    """Every series name these metrics expose (`_total`, `_bucket`, ... included), with its labels."""
    names: dict[str, tuple[str, ...]] = {}
    for metric in ALL:
        labels = tuple(metric._labelnames)
        for family in metric.describe():
            for suffix in {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}[
                    family.type]:
                names[family.name + suffix] = labels + (("le",) if suffix == "_bucket" else ())
    return names
