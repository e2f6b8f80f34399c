"""How a worker fetches (CVQ_FETCH__*) and how it processes and commits (CVQ_WORKER__*)."""

from typing import Any, Literal

from pydantic import BaseModel, Field


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
