"""How failed jobs come back: retries in process and through the retry topic (CVQ_RETRY__*), and the DLQ replay
policy (CVQ_REPLAY__*)."""

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from cv_queue.errors import DEFAULT_REPLAY_CATEGORIES, ErrorCategory


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
