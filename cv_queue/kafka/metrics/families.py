"""Every Prometheus metric cv-queue exports, in one place: names, help texts, labels and buckets.

Conventions: `cvq_` prefix, counters end in `_total`, durations are in seconds and sizes in bytes. Labels: `slot`
(a worker's partitions, "0-1"), `topic` and `partition` (a source partition of the worker), `category` (an
ErrorCategory value). Everything is in the process's default registry: one worker or one replay per process, as
`cv-queue worker`, `cv-queue dlq replay` and every Dagster run are.

A worker's own figures (WORKER_FAMILIES) are plain numbers it updates on its poll loop and the registry reads at
scrape time (recorder.py): a prometheus-client child takes a lock per update, which at ~15,000 no-op jobs/s cost a
fifth of a worker's CPU. The rest, updated per LLM answer, per replay batch or every few seconds, are ordinary
prometheus-client metrics.

Depth figures (consumer lag, DLQ and parking-lot depth) are offset differences: a transactional write adds one
commit-marker offset per partition and transaction, so they are upper bounds on record counts, as in
`cv-queue status` and the Dagster asset checks.
"""

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, disable_created_metrics
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


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


WORKER_FAMILIES: dict[str, Family] = {f.name: f for f in (
    # records and jobs
    Family("cvq_records_consumed_total", "counter", "Records consumed from the main and retry topics.", SOURCE),
    Family("cvq_jobs_succeeded_total", "counter", "Jobs whose result was produced to the results topic.", SLOT),
    Family("cvq_jobs_retried_total", "counter", "Failed deliveries sent to the retry topic, by category.",
           ("slot", "category")),
    Family("cvq_jobs_dead_lettered_total", "counter", "Records dead-lettered, by category.", ("slot", "category")),
    Family("cvq_jobs_timed_out_total", "counter", "Deliveries that exceeded job_timeout_s.", SLOT),
    Family("cvq_handler_calls_total", "counter", "Handler calls, in-process retries and repairs included.", SLOT),
    Family("cvq_handler_duration_seconds", "histogram",
           "Time one delivery of a job spent in the handler (all its in-process tries).", SLOT, JOB_BUCKETS),
    Family("cvq_job_latency_seconds", "histogram", "End to end: from the job's created_at to its result being routed.",
           SLOT, JOB_BUCKETS),
    # what the worker holds
    Family("cvq_worker_running", "gauge", "1 while the slot's worker runs, 0 once it stopped.", SLOT),
    Family("cvq_jobs_in_flight", "gauge", "Jobs running in a handler now.", SLOT),
    Family("cvq_jobs_buffered", "gauge", "Jobs accepted but not yet started.", SLOT),
    Family("cvq_held_bytes", "gauge", "Bytes held: records not yet settled plus outputs not yet produced.",
           SLOT),
    Family("cvq_retries_waiting", "gauge", "Retry records held in memory until they are due.", SLOT),
    Family("cvq_abandoned_handler_threads", "gauge",
           "Handlers still stuck in jobs that timed out: threads, and async job tasks that ignored their cancel.",
           SLOT),
    Family("cvq_partition_paused", "gauge", "1 while the worker has this source partition paused.", SOURCE),
    Family("cvq_consumer_lag", "gauge", "Records of the partition not yet committed by its worker.", SOURCE),
    Family("cvq_offset_map_bytes", "gauge",
           "Size of the partition's last committed map of finished offsets (NUL included; 0: none). At 75% of the "
           "broker's offset.metadata.max.bytes the partition stops fetching.", SOURCE),
    Family("cvq_records_skipped_total", "counter",
           "Records fetched again after a restart that the committed map showed as already done (not run again).",
           SOURCE),
    # transactions
    Family("cvq_transactions_committed_total", "counter",
           "Transactions committed (outputs with their source offsets).", SLOT),
    Family("cvq_transactions_aborted_total", "counter",
           "Transactions aborted (then redone, or given up on the way out).", SLOT),
    Family("cvq_transaction_commit_duration_seconds", "histogram",
           "Producing one transaction's outputs and committing it, retries included.", SLOT, COMMIT_BUCKETS),
    # the provider's quota as a budget (handlers that keep one: the LLM evaluator)
    Family("cvq_llm_budget_used_total", "counter",
           "Requests and tokens the worker's budget granted to calls (tokens as the provider counts them).",
           ("slot", "model", "kind")),
    Family("cvq_llm_budget_share", "gauge",
           "Fraction of the model's configured limits this worker may use now: 1 / live workers, times its AIMD "
           "factor (1: the whole share).", ("slot", "model")),
    Family("cvq_llm_calls_held_total", "counter",
           "Jobs that waited for budget before their call could start (not started into a 429).", ("slot", "model")),
    Family("cvq_llm_rate_limited_total", "counter", "429 responses from the provider, by model.", ("slot", "model")),
    Family("cvq_llm_cost_total", "counter",
           "What the answered calls cost, from their usage and llm.prices (the prices' currency).", ("slot", "model")),
    Family("cvq_llm_spend_window", "gauge",
           "What the fleet has spent in the current llm.spend window, as this worker knows it (its own spend and the "
           "ledger's); exported when llm.spend.limit is set.", ("slot", "model")),
    Family("cvq_llm_spend_paused", "gauge",
           "1 while the fleet's spend reached llm.spend.limit: the worker has paused intake until the next window.",
           ("slot", "model")),
)}

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

CLIENT_METRICS: tuple[MetricWrapperBase, ...] = (LLM_TOKENS, LLM_REQUESTS, DLQ_REPLAYED, DLQ_PARKED, DLQ_DEPTH,
                                                 PARKED_DEPTH)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def sample_names() -> dict[str, tuple[str, ...]]:
    """Every series name cv-queue exposes (`_total`, `_bucket`, ... included), with its labels."""
    declared = [(f.name.removesuffix("_total"), f.kind, f.labels) for f in WORKER_FAMILIES.values()]
    declared += [(fam.name, fam.type, tuple(m._labelnames)) for m in CLIENT_METRICS for fam in m.describe()]
    return {name + suffix: labels + (("le",) if suffix == "_bucket" else ())
            for name, kind, labels in declared for suffix in SUFFIXES[kind]}
