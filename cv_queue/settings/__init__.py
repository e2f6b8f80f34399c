"""Every setting of the queue, with its default and the environment variable that overrides it.

Two roots:
- `KafkaConnection` (env prefix `KAFKA_`, connection.py): where the broker is and how to authenticate.
- `QueueSettings` (env prefix `CVQ_`, nested with `__`, e.g. `CVQ_WORKER__MAX_IN_FLIGHT=64`; queue.py): topics,
  slots, fetch tuning, concurrency, retries and the DLQ replay policy, each section a module of its own:
  topics.py (CVQ_TOPICS__*, topic names, slots), worker.py (CVQ_FETCH__*, CVQ_WORKER__*), retry.py (CVQ_RETRY__*,
  CVQ_REPLAY__*), llm.py (CVQ_LLM__*; its quota: cv_queue/quota_settings.py) and operations.py (CVQ_FLEET__*,
  CVQ_METRICS__*, CVQ_ALERTS__*, CVQ_RUN_RETENTION__*, CVQ_K8S__*).
The README's config reference is generated from these field descriptions (`cv-queue config`).

Every public name is importable from here: `from cv_queue.settings import QueueSettings`.
"""

from cv_queue.settings.connection import DEFAULT_BOOTSTRAP, KafkaConnection
from cv_queue.settings.llm import LLMSettings
from cv_queue.settings.operations import (
    AlertSettings,
    FleetSettings,
    K8sSettings,
    MetricsSettings,
    RunRetentionSettings,
)
from cv_queue.settings.queue import QueueSettings
from cv_queue.settings.retry import ReplayPolicy, RetrySettings
from cv_queue.settings.topics import Slot, TopicNames, TopicSettings
from cv_queue.settings.worker import FetchSettings, WorkerSettings

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "AlertSettings",
    "FetchSettings",
    "FleetSettings",
    "K8sSettings",
    "KafkaConnection",
    "LLMSettings",
    "MetricsSettings",
    "QueueSettings",
    "ReplayPolicy",
    "RetrySettings",
    "RunRetentionSettings",
    "Slot",
    "TopicNames",
    "TopicSettings",
    "WorkerSettings",
]
