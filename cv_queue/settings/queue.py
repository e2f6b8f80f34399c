"""`QueueSettings` (env prefix `CVQ_`, nested with `__`): the root that holds every section, and the names, slots
and DLQ partitions derived from it."""

import zlib

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cv_queue.errors import CATEGORY_ORDER, ErrorCategory
from cv_queue.settings.llm import LLMSettings
from cv_queue.settings.operations import (
    AlertSettings,
    FleetSettings,
    K8sSettings,
    MetricsSettings,
    RunRetentionSettings,
)
from cv_queue.settings.retry import ReplayPolicy, RetrySettings
from cv_queue.settings.topics import Slot, TopicNames, TopicSettings
from cv_queue.settings.worker import FetchSettings, WorkerSettings


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


def _stable_hash(data: bytes) -> int:
    return zlib.crc32(data)
