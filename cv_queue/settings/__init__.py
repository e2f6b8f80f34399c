"""Every setting of the queue, with its default and the environment variable that overrides it.

Two roots:
- `KafkaConnection` (env prefix `KAFKA_`): where the broker is and how to authenticate.
- `QueueSettings` (env prefix `CVQ_`, nested with `__`, e.g. `CVQ_WORKER__MAX_IN_FLIGHT=64`): topics,
  slots, fetch tuning, concurrency, retries and the DLQ replay policy.
The README's config reference is generated from these field descriptions (`cv-queue config`).
"""

from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cv_queue.errors import CATEGORY_ORDER, DEFAULT_REPLAY_CATEGORIES, ErrorCategory
from cv_queue.lanes import Lane
from cv_queue.quota_settings import BudgetTuning, ModelPrice, ModelRateLimits

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

_SEED_TOPIC_CONFIG = {
    # The seed design's topic configuration, verbatim.
    "cleanup.policy": "delete",
    "retention.ms": "604800000",  # 7 days
    "segment.ms": "3600000",  # 1 hour
    "compression.type": "snappy",
    "min.insync.replicas": "1",
    "unclean.leader.election.enable": "false",
}


class KafkaConnection(BaseSettings):
    """How to reach the broker. Secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description="Comma-separated host:port list.")
    client_id: str = Field("cv-queue", description="Client id prefix reported to the broker.")
    security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    sasl_username: str | None = Field(None, description="SASL username.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")
    ssl_ca_location: str | None = Field(None, description="CA bundle file for SSL.")
    ssl_certificate_location: str | None = Field(None, description="Client certificate file (mTLS).")
    ssl_key_location: str | None = Field(None, description="Client private key file (mTLS).")
    ssl_key_password: SecretStr | None = Field(None, description="Password of the client key.")

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties shared by every client we build."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        return conf


class TopicSettings(BaseModel):
    """Topic layout. Names derive from `QueueSettings.namespace`; see `QueueSettings.topic_names`."""

    partitions: int = Field(8, ge=1, description="Partitions of the main topic (and the retry topic).")
    replication_factor: int = Field(1, ge=1, description="Replication factor of every topic.")
    partitions_per_worker: int = Field(2, ge=1, description="Partitions one worker slot owns (a pair).")
    dlq_partitions_per_category: int = Field(
        1, ge=1,
        description="DLQ partitions per error category (the DLQ is partitioned by category). Recorded at the first "
        "worker start or provisioning and fixed for the namespace: a process started with another value exits 9, "
        "since letters already filed would read as other categories.",
    )
    main_config: dict[str, str] = Field(
        default_factory=lambda: dict(_SEED_TOPIC_CONFIG),
        description="Configs of evaluate-jobs, evaluate-jobs-retry and evaluate-results (the seed's).",
    )
    dead_letter_retention_ms: int = Field(
        30 * 24 * 3600 * 1000, description="retention.ms of the DLQ and the parking lot (30 days)."
    )
    max_message_bytes: int = Field(
        2_097_152,
        description="max.message.bytes of the DLQ and parking lot: room for a maximal job plus headers.",
    )
    apply_acls: bool = Field(
        False,
        description="Materializing the Dagster topic assets also applies the principals' ACLs (as `cv-queue acls "
        "apply` does). Off by default: only a secured cluster with the cvq-* principals wants it.",
    )

    @model_validator(mode="after")
    def _slots_tile_partitions(self) -> "TopicSettings":
        if self.partitions % self.partitions_per_worker:
            raise ValueError(
                f"partitions ({self.partitions}) must be a multiple of partitions_per_worker "
                f"({self.partitions_per_worker}) so that worker slots tile the topic"
            )
        return self


class FetchSettings(BaseModel):
    """Consumer fetch tuning (the seed's values)."""

    fetch_max_bytes: int = Field(1_048_576, description="fetch.max.bytes: 1 MB per fetch.")
    fetch_wait_max_ms: int = Field(100, description="fetch.wait.max.ms: 100 ms.")
    fetch_min_bytes: int = Field(1, description="fetch.min.bytes: 1.")
    max_partition_fetch_bytes: int = Field(1_048_576, description="max.partition.fetch.bytes: 1 MB.")
    max_records_per_poll: int = Field(1000, ge=1, description="Records per consume() call.")
    queued_max_messages_kbytes: int = Field(
        16_384, ge=1,
        description="queued.max.messages.kbytes: librdkafka's prefetch queue per worker (16 MiB). Its 64 MiB default "
        "would be most of a worker's memory.",
    )
    poll_timeout_ms: int = Field(
        500, ge=1, le=1000, description="Longest idle poll; ≤ 1 s so a termination signal is seen quickly."
    )


class WorkerSettings(BaseModel):
    """How one partition-pair worker processes and commits."""

    max_in_flight: int = Field(
        32, ge=1,
        description="Jobs running at once per worker. 32 suits ~1 s LLM calls: 4 workers keep 128 calls "
        "in flight, ~128 jobs/s, without tripping typical provider concurrency limits.",
    )
    ordering: Literal["key", "partition"] = Field(
        "key",
        description="What must not run concurrently: jobs with the same key (default), or any two jobs of one "
        "partition (the seed's one-job-at-a-time-per-partition design).",
    )
    max_buffered: int = Field(
        2000, ge=1,
        description="Records polled but not yet started (retries not yet due are counted apart); at this many the "
        "worker pauses fetching until half are started.",
    )
    max_partition_bytes: int = Field(
        16 * 1024 * 1024, ge=1_048_576,
        description="Bytes one source partition may hold in the worker: records not yet settled plus outputs "
        "waiting for the watermark. At the cap that partition alone is paused (e.g. behind a hung job) until half "
        "is released.",
    )
    max_partition_records: int = Field(
        5000, ge=1, description="Records one source partition may hold in the worker; paused at the cap, like bytes."
    )
    job_timeout_s: float = Field(
        180.0, gt=0,
        description="Longest one delivery of a job may run (all in-process tries). A slow LLM call takes up to ~60 s, "
        "so 180 s leaves room for retries. Past it the job fails as transient (cv_queue.JobTimeout), its late "
        "answer is dropped and its handler slot is refilled.",
    )
    max_abandoned_handlers: int = Field(
        32, ge=1,
        description="Handler threads still stuck in jobs that timed out (and async job tasks that ignored their "
        "cancellation, and a handler's own threads stuck in calls of timed-out jobs, such as cv_ref reads). Past "
        "this many the worker commits what is complete and exits with code 5, so the restarted process frees them.",
    )
    cancel_grace_s: float = Field(
        5.0, gt=0,
        description="How long an async job cancelled at job_timeout_s may take to end. One still running then "
        "swallowed its cancellation (a bare except, asyncio.shield, a finally that awaits): its job is settled as "
        "timed out, its key freed, and its task abandoned, counted against max_abandoned_handlers; its late outcome "
        "is dropped.",
    )
    commit_interval_ms: int = Field(
        50, ge=1, description="Commit a transaction at least this often (bounds the latency a commit adds)."
    )
    commit_max_records: int = Field(500, ge=1, description="...or as soon as this many records settled.")
    shutdown_grace_ms: int = Field(
        10_000, ge=0,
        description="On stop, wait this long for running jobs before committing every finished one and closing; "
        "10 s lets ~1 s LLM calls finish (ten times over), and jobs still running then are run again by the next "
        "worker. Dagster worker runs take it from here unless their run config sets shutdown_grace_s.",
    )
    release_outputs: Literal["at_once", "in_order"] = Field(
        "at_once",
        description="at_once: a finished job's output is produced in the next transaction, whatever older jobs of "
        "its partition still run; the finished offsets above the committed one travel in the commit's metadata, so "
        "a restart skips them. in_order: outputs wait until every older offset of the partition is done (the "
        "plain watermark; one slow job holds back its partition's later results).",
    )
    offset_metadata_max_bytes: int | None = Field(
        None, ge=64,
        description="Largest commit metadata (the map of finished offsets, NUL included) the worker sends. Unset: "
        "the broker's offset.metadata.max.bytes, read at start, or Kafka's default 4096 where the broker does not "
        "say (Redpanda, or no DescribeConfigs ACL); set, it can only lower the broker's. At 75% a partition stops "
        "fetching; an output whose offset would not fit the map waits instead. At least 64 (a map's header).",
    )
    foreign_offset_metadata: Literal["refuse", "ignore"] = Field(
        "refuse",
        description="Committed offset metadata that cv-queue did not write (another tool committed the group), or "
        "that does not decode: refuse stops the worker with a message naming the group and partition; ignore "
        "starts from the committed offset and runs every job above it (jobs finished there may run again).",
    )
    offset_reset: Literal["fail", "earliest", "latest"] = Field(
        "fail",
        description="A committed offset outside its partition's log (above the log end: the topic was deleted and "
        "recreated, or data was lost; below the log start: retention deleted records no worker ran): fail stops the "
        "worker at start (exit 10) naming the topic, partition, committed offset and the log's start and end; "
        "earliest runs every record the log still has from its start (skipping those an earlier worker finished); "
        "latest skips to the log end. Either logs what it skipped. A record fetched below the committed offset while "
        "running (a topic recreated under a running worker) ends the worker with exit 10 instead, so its restart "
        "applies this.",
    )
    transaction_timeout_ms: int = Field(60_000, description="transaction.timeout.ms of the worker producer.")
    transaction_give_up_s: float = Field(
        300.0, gt=0,
        description="A transaction that keeps failing (an error librdkafka says to abort and redo) for this long "
        "without a commit ends the worker, naming the error: exit 7 when the broker denies a write (an ACL revoked), "
        "10 when an output topic is missing, else 4. 5 minutes rides out a broker restart or a leader election; a "
        "deleted topic or a revoked ACL does not go away by itself.",
    )
    client_stall_s: float = Field(
        90.0, gt=0,
        description="A transactional call (send offsets, commit) blocked longer than this is stuck in librdkafka, "
        "past its own 30-60 s timeout (a known client bug when a coordinator node dies): the worker exits with "
        "code 8 without committing, and its restart resumes from the last commit.",
    )
    progress_interval_s: float = Field(10.0, gt=0, description="How often a worker reports progress.")
    max_job_bytes: int = Field(
        524_288, ge=1, description="Larger job records are rejected as invalid_payload (512 KiB)."
    )
    max_result_bytes: int = Field(
        900_000, ge=1, description="A larger result is dead-lettered as permanent (it could never be produced)."
    )
    handler: str = Field(
        "cv_queue.evaluation.scorer:KeywordScorer",
        description="Dotted path (module:attr) of the job handler; a class is instantiated with handler_options.",
    )
    handler_options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the handler.")


class RetrySettings(BaseModel):
    """Two retry layers: tenacity in process, then the delayed retry topic."""

    inprocess_tries: int = Field(3, ge=1, description="Handler calls per delivery for transient errors.")
    inprocess_initial_ms: int = Field(100, ge=0, description="First in-process backoff.")
    inprocess_max_ms: int = Field(1000, ge=0, description="Largest in-process backoff.")
    inprocess_max_total_ms: int = Field(2000, ge=0, description="In-process retrying gives up after this.")
    base_delay_ms: int = Field(1000, ge=0, description="Retry-topic delay after the first failed delivery.")
    multiplier: float = Field(2.0, ge=1.0, description="Each further delivery waits this much longer.")
    max_delay_ms: int = Field(
        60_000, ge=0,
        description="Cap on one retry-topic backoff delay. A rate limiter's own Retry-After is honoured beyond it, "
        "within rate_limit_budget_s.",
    )
    rate_limit_budget_s: float = Field(
        3600.0, gt=0, le=7 * 86400,
        description="How long a job may keep being refused by a rate limiter (429), from its first refusal. A "
        "throttled job waits (the provider's Retry-After, else the backoff) and comes back through the retry topic; "
        "throttled deliveries do not count toward max_attempts. A wait that would end past this budget (an absurd "
        "Retry-After included) dead-letters the job as rate_limited, with the asked-for wait in "
        "cvq.retry.after.requested.s, which a replay honours (up to this budget).",
    )
    jitter: float = Field(0.2, ge=0.0, le=1.0, description="Delays vary uniformly by ± this fraction.")
    max_attempts: int = Field(
        5, ge=1, description="Failed deliveries before a transient job is dead-lettered (1 = no retry topic for "
        "it). Rate-limited deliveries (429s) are not counted: they have retry.rate_limit_budget_s."
    )
    max_waiting_per_partition: int = Field(
        500, ge=1, description="Not-yet-due retry records held per retry partition before it is paused."
    )
    output_repairs: int = Field(
        2, ge=0,
        description="Extra handler calls, in the same delivery, when the handler's output fails validation "
        "(pydantic ValidationError, JSONDecodeError, MalformedOutputError: a malformed LLM answer). After them the "
        "job is dead-lettered as permanent; it is never invalid_payload, which is for undecodable input only.",
    )
    rules: dict[str, ErrorCategory] = Field(
        default_factory=dict,
        description="Extra exception classes (dotted path) mapped to a category; the most specific wins.",
    )


class ReplayPolicy(BaseModel):
    """What the Dagster DLQ sensor replays on its own, and the caps every replay honours."""

    auto_categories: list[ErrorCategory] = Field(
        default_factory=lambda: list(DEFAULT_REPLAY_CATEGORIES),
        description="Categories replayed automatically (invalid_payload never is).",
    )
    cooldown_s: float = Field(60.0, ge=0, description="Replay a dead letter only this long after it failed.")
    max_replays: int = Field(3, ge=0, description="A letter replayed this often goes to the parking lot.")
    batch_size: int = Field(500, ge=1, description="Most letters one sensor-triggered replay run moves.")
    sensor_interval_s: int = Field(30, ge=1, description="Seconds between DLQ sensor ticks.")
    retry_max: int = Field(
        3, ge=0, description="Retries of a replay run's step when the broker fails (sensor-triggered runs, and the "
        "Launchpad's default).")
    retry_delay_s: float = Field(5.0, ge=0, description="Delay before a replay run's first retry.")
    retry_backoff: Literal["exponential", "linear", "constant"] = Field(
        "exponential", description="How later retry delays grow: exponential (x2 each), linear, constant.")
    retry_jitter: bool = Field(True, description="Randomise each replay retry delay by ±25%.")
    transaction_give_up_s: float = Field(
        120.0, gt=0,
        description="A replay transaction that keeps failing for this long without a commit ends the replay, naming "
        "the error (`dlq replay` exits 7 when a write is denied, 10 when a topic is missing, else 4; a reprocess_dlq "
        "run fails, retried only when the cause is neither). Its target topic is checked before it starts.",
    )

    @field_validator("auto_categories")
    @classmethod
    def _never_invalid(cls, value: list[ErrorCategory]) -> list[ErrorCategory]:
        if ErrorCategory.INVALID_PAYLOAD in value:
            raise ValueError("invalid_payload letters are never replayed automatically; replay them by hand")
        return value


class FleetSettings(BaseModel):
    """How the Dagster fleet sensor keeps one worker run per slot."""

    sensor_interval_s: int = Field(15, ge=1, description="Seconds between fleet sensor ticks.")
    restart_backoff_s: float = Field(
        20.0, ge=0, description="A slot whose run just failed waits this long before a replacement starts; each "
        "further failure in a row doubles the wait, up to max_restart_backoff_s.")
    max_restart_backoff_s: float = Field(
        600.0, ge=0, description="The longest a slot waits after failures in a row: a cause a restart cannot cure "
        "(a recreated topic, a revoked ACL) costs a run this often rather than a crash loop, and the slot heals by "
        "itself once the cause is fixed.")
    dead_after_s: float = Field(
        60.0, ge=5, description="A STARTING or STARTED worker run whose slot has had no live worker in the presence "
        "group for this long is dead, whatever the run launcher says: the fleet sensor marks it failed, with the "
        "reason in its event log (so the failure alert fires), and launches a replacement at once. A killed worker "
        "leaves the group within Kafka's session timeout (10 s); a run that just STARTED has this long to join it.")
    start_timeout_s: float = Field(
        180.0, ge=5, description="A STARTING worker run (launched, its process not yet executing: a container "
        "pulling its image, a Python process importing on a busy host) is judged dead only after this long without a "
        "live worker for its slot (at least dead_after_s). Matches run_monitoring.start_timeout_seconds in "
        "dagster.yaml.")


class LLMSettings(BaseModel):
    """The OpenAI-compatible chat-completions endpoint the LLM evaluator calls (OpenAI, OpenRouter, vLLM, Ollama,
    LiteLLM: anything that speaks /v1/chat/completions)."""

    base_url: str = Field("https://api.openai.com/v1", description="The API's base URL, up to and including /v1.")
    model: str = Field("gpt-4o-mini", description="Model name as the provider spells it.")
    api_key: SecretStr | None = Field(
        None, description="API key (secret: never logged; in Dagster an EnvVar). Unset: OPENAI_API_KEY is used.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature; 0 for repeatable scores.")
    max_tokens: int = Field(1200, ge=1, description="Most tokens one answer may use.")
    request_timeout_s: float = Field(60.0, gt=0, description="Timeout of one HTTP request to the provider.")
    max_concurrent_requests: int = Field(
        256, ge=1, description="Requests in flight at once per worker process (a provider's concurrency limit).")
    file_read_threads: int = Field(
        8, ge=1,
        description="Threads that read cv_ref files, apart from the event loop's default executor (which DNS lookups "
        "need), so reads hung on a dead mount cannot starve it. A read ends with its job's timeout; a thread still "
        "stuck in it counts against worker.max_abandoned_handlers.")
    max_repairs: int = Field(
        2, ge=0, description="Follow-up calls asking the model to fix a malformed or out-of-range answer; after "
        "them the job is permanent, with the raw answer (truncated) in the dead letter.")
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="How JSON is requested: JSON-schema structured output, JSON mode, or the prompt alone. "
        "auto tries json_schema and falls back when the server refuses it.")
    rate_limits: dict[str, ModelRateLimits] = Field(
        default_factory=dict,
        description="The provider's limits by model name, for the whole fleet: a JSON object such as "
        '{"gpt-4o-mini": {"requests_per_minute": 500, "tokens_per_minute": 200000}}. The live workers share them '
        "and pause intake while their share is spent. Empty: unlimited (a 429 still slows a worker down).")
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description='Prices by model name: {"gpt-4o-mini": {"input_per_million": 0.15, "output_per_million": 0.6}}. '
        "A result's usage then carries its cost, and cvq_llm_cost_total counts it. Empty: no cost is computed.")
    budget: BudgetTuning = Field(default_factory=BudgetTuning)


class MetricsSettings(BaseModel):
    """Prometheus endpoints (prometheus-client) of worker and replay processes."""

    enabled: bool = Field(True, description="Serve /metrics from every worker and replay run.")
    host: str = Field("127.0.0.1", description="Interface the metrics endpoints bind (0.0.0.0 in containers).")
    worker_port_base: int = Field(
        9400, ge=1, le=65000,
        description="Dagster worker runs serve metrics on base + slot index (slot 0-1 on 9400, 2-3 on 9401, ...).")
    replay_port: int = Field(9490, ge=1, le=65535, description="A reprocess_dlq run serves metrics here while it runs.")


class AlertSettings(BaseModel):
    """Dagster alerting: asset-check thresholds (a check fails when a depth is above one) and where alerts go.

    Worker and replay run failures, and checks failing at `notify_severity` or worse, go to the notifier: a
    log line always, a JSON POST to `webhook_url` when set, and `notifier` when set."""

    dlq_depth_warn: int = Field(
        100, ge=0, description="Dead letters per category not yet replayed above which its DLQ check fails WARN.")
    dlq_depth_error: int = Field(1000, ge=0, description="...and fails ERROR above this many.")
    parked_depth_warn: int = Field(
        0, ge=0, description="Parked-letter offsets above which the parking-lot check fails WARN (0: any letter).")
    parked_depth_error: int = Field(100, ge=0, description="...and fails ERROR above this many.")
    consumer_lag_warn: int = Field(
        10_000, ge=0, description="Worker group lag on the main topic above which its check fails WARN.")
    consumer_lag_error: int = Field(100_000, ge=0, description="...and fails ERROR above this many.")
    notify_severity: Literal["WARN", "ERROR"] = Field(
        "ERROR", description="Checks failing at this severity or worse are notified (once per change).")
    webhook_url: SecretStr | None = Field(
        None, description="POST each alert as JSON here (a bridge to chat or paging); secret: never logged.")
    webhook_timeout_s: float = Field(
        5.0, gt=0, le=10, description="Timeout of one webhook POST; a failed POST is logged, never retried.")
    notifier: str = Field(
        "", description="Dotted path (module:attr) of an extra notifier: a callable taking an Alert, or a class "
        "instantiated with no arguments whose instances are such callables.")
    sensor_interval_s: int = Field(30, ge=1, description="Seconds between ticks of the run-failure alert sensor.")

    @model_validator(mode="after")
    def _error_above_warn(self) -> "AlertSettings":
        for name in ("dlq_depth", "parked_depth", "consumer_lag"):
            if getattr(self, f"{name}_error") < getattr(self, f"{name}_warn"):
                raise ValueError(f"{name}_error must be at least {name}_warn")
        return self


class RunRetentionSettings(BaseModel):
    """Dagster OSS 1.13 has no run or event-log retention setting, so the purge_old_runs schedule deletes finished
    runs (with their event logs) this old."""

    finished_run_days: float = Field(
        14.0, ge=0, description="Delete runs that finished more than this many days ago (0 = keep every run).")
    cron: str = Field("15 3 * * *", description="When the purge_old_runs schedule runs (cron, UTC).")


class K8sSettings(BaseModel):
    """Kubernetes only (K8sRunLauncher): the pod of each worker run, set through the `dagster-k8s/config` tag the
    fleet sensor and the slot partitions put on worker runs. Other run launchers ignore the tag."""

    worker_cpu_request: str = Field("500m", description="CPU a worker run's pod requests (a Kubernetes quantity).")
    worker_memory_request: str = Field("512Mi", description="Memory a worker run's pod requests.")
    worker_cpu_limit: str = Field(
        "", description="CPU limit of a worker run's pod ('' = none: a limit throttles the poll loop under load).")
    worker_memory_limit: str = Field("1Gi", description="Memory limit of a worker run's pod ('' = none).")
    worker_termination_grace_s: int = Field(
        60, ge=1, description="Seconds between SIGTERM and SIGKILL of a worker pod: time to commit completed work.")


class TopicNames(BaseModel):
    main: str
    interactive: str
    retry: str
    dlq: str
    results: str
    parked: str

    def all(self) -> list[str]:
        return [self.main, self.interactive, self.retry, self.dlq, self.results, self.parked]

    @property
    def consumed(self) -> tuple[str, str, str]:
        """The topics a worker slot reads, each at the slot's partition numbers: the two lanes' and the retry topic."""
        return self.main, self.interactive, self.retry

    def for_lane(self, lane: Lane) -> str:
        """The topic jobs of `lane` are enqueued to."""
        return self.interactive if lane == Lane.INTERACTIVE else self.main


class QueueSettings(BaseSettings):
    """The queue's whole configuration. Read from CVQ_* environment variables when not given."""

    model_config = SettingsConfigDict(env_prefix="CVQ_", env_nested_delimiter="__", extra="ignore")

    namespace: str = Field(
        "", description="Prefix for every topic, group and transactional id ('' = the plain names)."
    )
    consumer_group: str = Field("cv-queue-workers", description="Group whose offsets workers commit.")
    replay_group: str = Field("cv-queue-dlq-reprocessor", description="Group whose offsets DLQ replay commits.")
    topics: TopicSettings = Field(default_factory=TopicSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    replay: ReplayPolicy = Field(default_factory=ReplayPolicy)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    run_retention: RunRetentionSettings = Field(default_factory=RunRetentionSettings)
    k8s: K8sSettings = Field(default_factory=K8sSettings)

    def _ns(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def topic_names(self) -> TopicNames:
        return TopicNames(
            main=self._ns("evaluate-jobs"),
            interactive=self._ns("evaluate-jobs-interactive"),
            retry=self._ns("evaluate-jobs-retry"),
            dlq=self._ns("evaluate-jobs-dlq"),
            results=self._ns("evaluate-results"),
            parked=self._ns("evaluate-jobs-parked"),
        )

    @property
    def group_id(self) -> str:
        return self._ns(self.consumer_group)

    @property
    def replay_group_id(self) -> str:
        return self._ns(self.replay_group)

    def transactional_id(self, slot: "Slot") -> str:
        return self._ns(f"cv-queue-worker-{slot.name}")

    @property
    def replay_transactional_id(self) -> str:
        return self._ns("cv-queue-dlq-reprocessor")

    def slots(self) -> list["Slot"]:
        """Worker slots tiling the main topic: 0-1, 2-3, 4-5, 6-7 by default."""
        step = self.topics.partitions_per_worker
        return [Slot(partitions=tuple(range(i, i + step))) for i in range(0, self.topics.partitions, step)]

    def dlq_partition(self, category: ErrorCategory, key: bytes | None) -> int:
        """The DLQ partition of a dead letter: the category's block, spread by key within it."""
        per = self.topics.dlq_partitions_per_category
        offset = (_stable_hash(key) % per) if per > 1 and key else 0
        return CATEGORY_ORDER.index(category) * per + offset

    def dlq_partitions(self, categories: list[ErrorCategory]) -> list[int]:
        per = self.topics.dlq_partitions_per_category
        return [CATEGORY_ORDER.index(c) * per + i for c in categories for i in range(per)]

    def dlq_category(self, partition: int) -> ErrorCategory:
        return CATEGORY_ORDER[partition // self.topics.dlq_partitions_per_category]


class Slot(BaseModel, frozen=True):
    """A worker's fixed set of partitions (of the main topic and, by number, of the retry topic)."""

    partitions: tuple[int, ...]

    @property
    def name(self) -> str:
        """'0-1' for a contiguous pair; '0_3_5' otherwise."""
        p = self.partitions
        if len(p) > 1 and list(p) == list(range(p[0], p[-1] + 1)):
            return f"{p[0]}-{p[-1]}"
        return "_".join(str(x) for x in p)

    @classmethod
    def parse(cls, text: str) -> "Slot":
        """Accepts '0,1', '0-1' or '3'."""
        text = text.strip()
        try:
            if "-" in text:
                lo, hi = (int(x) for x in text.split("-", 1))
                parts = tuple(range(lo, hi + 1))
            else:
                parts = tuple(int(x) for x in text.replace("_", ",").split(",") if x.strip())
        except ValueError as exc:
            raise ValueError(f"not a partition list: {text!r} (use '0,1' or '0-1')") from exc
        if not parts or min(parts) < 0 or len(set(parts)) != len(parts):
            raise ValueError(f"not a partition list: {text!r} (use '0,1' or '0-1')")
        return cls(partitions=tuple(sorted(parts)))


def _stable_hash(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)
