"""What a replay is asked (ReplayRequest: categories, filters, caps) and what it answers (ReplayReport: counts by
category and outcome, where each DLQ partition was left and committed). The replay itself: replayer.py."""

from enum import StrEnum

from pydantic import BaseModel, Field

from cv_queue.errors import DEFAULT_REPLAY_CATEGORIES, ErrorCategory


class ReplayOutcome(StrEnum):
    """What happened to a letter replay handled. There is no "skipped": a letter left alone stops its partition."""

    REPLAYED = "replayed"
    PARKED = "parked"
    REFILED = "refiled"  # moved to the DLQ partitions of the category its header names


class ReplayRequest(BaseModel):
    """What to replay. Defaults replay every retryable letter of any age."""

    categories: list[ErrorCategory] = Field(
        default_factory=lambda: list(DEFAULT_REPLAY_CATEGORIES),
        description="Categories to replay (each maps to its own DLQ partitions).",
    )
    error_classes: list[str] = Field(
        default_factory=list,
        description="Only letters whose error class matches (full dotted name or bare class name); [] = all.",
    )
    min_age_s: float = Field(0.0, ge=0, description="Leave letters that failed less than this long ago.")
    max_messages: int = Field(10_000, ge=1, description="Most letters handled in this run.")
    dry_run: bool = Field(False, description="Read and report only: produce nothing, commit nothing.")
    target_topic: str | None = Field(None, description="Where replayed jobs go; None = the main topic.")
    max_replays: int = Field(3, ge=0, description="Letters already replayed this often are parked instead.")
    batch_size: int = Field(1000, ge=1, description="Letters per transaction.")


class ReplayReport(BaseModel):
    dry_run: bool
    scanned: int = 0
    replayed: int = 0
    parked: int = 0
    refiled: int = Field(0, description="Letters whose category header is not one asked for, moved to that "
                                        "category's DLQ partitions instead of being replayed.")
    left_too_young: dict[int, int] = Field(default_factory=dict, description="Partition -> first young offset.")
    left_unmatched: dict[int, int] = Field(
        default_factory=dict, description="Partition -> offset of the first letter of an error class not asked for.")
    by_category: dict[str, dict[str, int]] = Field(default_factory=dict)
    committed_offsets: dict[int, int] = Field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate_per_s(self) -> float:
        return self.scanned / self.seconds if self.seconds else 0.0

    @property
    def skipped(self) -> int:
        """Always 0: replay no longer skips letters (see `left_unmatched`). Kept for existing readers."""
        return 0
