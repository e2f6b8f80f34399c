"""Operating the queue: the Dagster fleet sensor (CVQ_FLEET__*), metrics endpoints (CVQ_METRICS__*), alerts
(CVQ_ALERTS__*), run retention (CVQ_RUN_RETENTION__*) and Kubernetes worker pods (CVQ_K8S__*)."""

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator


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
