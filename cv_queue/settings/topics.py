"""The topics' layout and configs (CVQ_TOPICS__*), the names derived from the namespace, and worker slots."""

from pydantic import BaseModel, Field, model_validator

from cv_queue.lanes import Lane

_SEED_TOPIC_CONFIG = {
    # The seed design's topic configuration, verbatim.
    "cleanup.policy": "delete",
    "retention.ms": "604800000",  # 7 days
    "segment.ms": "3600000",  # 1 hour
    "compression.type": "snappy",
    "min.insync.replicas": "1",
    "unclean.leader.election.enable": "false",
}


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
