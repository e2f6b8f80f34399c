"""The messages on the wire: jobs, results and the decoded view of a dead letter.

Values are JSON; the record key is `job_id` for jobs and results alike. `decode_job` is the only way a
worker turns bytes into a job, and every way the bytes can be wrong ends in one InvalidPayloadError
whose `reason` says which.
"""

import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from cv_queue.errors import ErrorCategory, InvalidPayloadError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=False)]


class EvaluationJob(BaseModel):
    """One CV to evaluate against a job description, a study case brief and a rubric."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: Identifier
    cv_id: Identifier
    project_id: Identifier
    cv_text: str | None = Field(None, description="The CV's extracted text, inline.")
    cv_ref: str | None = Field(None, description="Or a reference to it (file:///abs/path.txt).")
    project_text: str | None = Field(None, description="The candidate's project report text, if any.")
    job_description: str
    study_case_brief: str
    scoring_rubric: dict[str, Annotated[float, Field(ge=0)]] = Field(
        description="Criterion -> weight; weights need not sum to 1."
    )
    request_id: Identifier
    created_at: AwareDatetime
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form tags (tenant, priority, ...).")

    @field_validator("created_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # Kept in UTC: a local time in a DST gap or fold, or with an offset in seconds (a historical local mean
        # time), would not come back from JSON as the same value; the instant is what matters.
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _has_cv_and_weights(self) -> "EvaluationJob":
        if self.cv_text is None and self.cv_ref is None:
            raise ValueError("one of cv_text or cv_ref is required")
        if not any(w > 0 for w in self.scoring_rubric.values()):
            raise ValueError("scoring_rubric needs at least one positive weight")
        return self

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    @property
    def key(self) -> bytes:
        return self.job_id.encode("utf-8")


class EvaluationScores(BaseModel):
    """What a handler returns; the worker wraps it into an EvaluationResult."""

    model_config = ConfigDict(extra="forbid")

    cv_match_rate: float = Field(ge=0.0, le=1.0)
    project_score: float = Field(ge=0.0, le=10.0)
    criteria: dict[str, float] = Field(default_factory=dict, description="Per-criterion score in [0, 1].")
    cv_feedback: str
    project_feedback: str
    overall_summary: str


class ModelUsage(BaseModel):
    """Which model answered, with which prompt, and what it cost in tokens (for results and metrics)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    prompt_version: str
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    total_tokens: int = Field(0, ge=0)
    calls: int = Field(1, ge=1, description="Chat-completion calls this answer took (repairs included).")
    cost: float | None = Field(
        None, ge=0, description="What those calls cost, from llm.prices (None: the model has no price there).")


class Evaluation(BaseModel):
    """What a handler may return instead of bare scores: the scores and the model usage behind them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scores: EvaluationScores
    usage: ModelUsage | None = None


class EvaluationResult(BaseModel):
    """The outcome of one job, written to the results topic exactly once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    request_id: str
    scores: EvaluationScores
    evaluated_at: AwareDatetime
    job_created_at: AwareDatetime
    attempts: int = Field(ge=1, description="The delivery that succeeded (1 = first try of the record).")
    handler_calls: int = Field(ge=1, description="Handler invocations across deliveries and in-process retries.")
    replays: int = Field(0, ge=0, description="How often the job came back from the DLQ.")
    worker: str
    usage: ModelUsage | None = Field(None, description="The model, prompt version and tokens, for LLM handlers.")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")


class DeadLetter(BaseModel):
    """A DLQ record, decoded: the original record byte-exact plus where and why it failed."""

    model_config = ConfigDict(frozen=True)

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = Field(description="The original record's own headers.")
    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp: datetime
    category: ErrorCategory
    error_class: str
    error_message: str
    error_stacktrace: str
    attempts: int
    first_failed_at: datetime
    failed_at: datetime
    worker: str
    replays: int
    retry_after_requested_s: float | None = Field(
        None, description="A rate limiter's wait that outlasted the rate-limit budget (cvq.retry.after.requested.s).")

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.failed_at).total_seconds()


def _reason_for(exc: ValidationError) -> str:
    kinds = {e["type"] for e in exc.errors()}
    locs = {e["loc"][0] for e in exc.errors() if e["loc"]}
    if "json_invalid" in kinds or "json_type" in kinds:
        return "not_json"
    if "model_type" in kinds or "model_attributes_type" in kinds:
        return "not_object"
    if "schema_version" in locs:
        return "unknown_schema_version"
    if kinds <= {"missing"}:
        return "missing_field"
    if "extra_forbidden" in kinds:
        return "unknown_field"
    return "schema_invalid"


def decode_job(value: bytes | None, key: bytes | None = None, max_bytes: int = 524_288) -> EvaluationJob:
    """Strictly parse a job record value; raise InvalidPayloadError(reason) on anything else.

    Reasons: null_value, oversize, bad_utf8, not_json, not_object, missing_field, unknown_field,
    unknown_schema_version, schema_invalid, key_mismatch.
    """
    if value is None:
        raise InvalidPayloadError("null_value", "the record has no value")
    if len(value) > max_bytes:
        raise InvalidPayloadError("oversize", f"{len(value)} bytes > limit {max_bytes}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayloadError("bad_utf8", str(exc)) from exc
    try:
        job = EvaluationJob.model_validate_json(value)
    except ValidationError as exc:
        reason = _reason_for(exc)
        if reason == "unknown_schema_version":
            raise InvalidPayloadError(reason, f"supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)}") from exc
        raise InvalidPayloadError(reason, _summary(exc)) from exc
    if key is not None and key != job.key:
        raise InvalidPayloadError("key_mismatch", f"record key {key[:60]!r} is not job_id {job.job_id!r}")
    return job


def _summary(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)


def encode_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")
