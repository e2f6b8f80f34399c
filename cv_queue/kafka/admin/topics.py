"""Topics as declarative specs, and provisioning that converges the broker onto them.

`provision` creates what is missing, repairs config drift with incremental alter-configs, grows
partitions, refuses to shrink, and reports every config the broker rejected instead of silently
falling back (the original implementation fell back to a 1-partition topic without a word).
"""

import time
from collections.abc import Iterable
from enum import StrEnum

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)
from pydantic import BaseModel, Field

from cv_queue.errors import CATEGORY_ORDER
from cv_queue.settings import QueueSettings

ADMIN_TIMEOUT_S = 30.0
_CONFIG_REJECTIONS = {KafkaError.INVALID_CONFIG, KafkaError.POLICY_VIOLATION, KafkaError.INVALID_REQUEST}


class TopicRole(StrEnum):
    MAIN = "main"
    INTERACTIVE = "interactive"
    RETRY = "retry"
    DLQ = "dlq"
    RESULTS = "results"
    PARKED = "parked"


class TopicSpec(BaseModel, frozen=True):
    """What a topic should look like."""

    name: str
    role: TopicRole
    partitions: int = Field(ge=1)
    replication_factor: int = Field(ge=1)
    config: dict[str, str]


class ProvisioningError(RuntimeError):
    """Provisioning cannot converge a topic; the message says why and what to change."""


class ConfigChange(BaseModel):
    key: str
    before: str | None
    after: str


class TopicAction(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


class TopicReport(BaseModel):
    """What provisioning did to one topic."""

    name: str
    role: TopicRole
    action: TopicAction
    partitions_before: int | None
    partitions: int
    replication_factor: int
    config_changes: list[ConfigChange] = Field(default_factory=list)
    dropped_configs: dict[str, str] = Field(
        default_factory=dict, description="Spec configs the broker rejected or ignores, with its reason."
    )


class ProvisionReport(BaseModel):
    topics: list[TopicReport]

    def by_action(self, action: TopicAction) -> list[str]:
        return [t.name for t in self.topics if t.action == action]


class TopicState(BaseModel):
    """A live topic as the broker describes it."""

    name: str
    partitions: int
    replication_factor: int
    leaders: dict[int, int]
    replicas: dict[int, list[int]]
    isr: dict[int, list[int]]
    config: dict[str, str]


class ConfigDrift(BaseModel):
    key: str
    desired: str
    live: str | None


class TopicDrift(BaseModel):
    """How a live topic differs from its spec; empty lists and missing=False mean no drift."""

    name: str
    missing: bool = False
    partitions_desired: int
    partitions_live: int | None = None
    replication_desired: int
    replication_live: int | None = None
    configs: list[ConfigDrift] = Field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return (
            self.missing
            or self.partitions_live != self.partitions_desired
            or self.replication_live != self.replication_desired
            or bool(self.configs)
        )


def topic_specs(settings: QueueSettings) -> list[TopicSpec]:
    """The six topics of the queue, named from the namespace."""
    t = settings.topics
    names = settings.topic_names
    main_config = dict(t.main_config)
    dead_config = {
        **main_config,
        "retention.ms": str(t.dead_letter_retention_ms),
        "max.message.bytes": str(t.max_message_bytes),
    }
    dlq_partitions = len(CATEGORY_ORDER) * t.dlq_partitions_per_category
    rf = t.replication_factor
    return [
        TopicSpec(name=names.main, role=TopicRole.MAIN, partitions=t.partitions, replication_factor=rf,
                  config=main_config),
        # The interactive lane, laid out like the main topic: its partition p belongs to the slot of main's p.
        TopicSpec(name=names.interactive, role=TopicRole.INTERACTIVE, partitions=t.partitions,
                  replication_factor=rf, config=main_config),
        # Same partition count: a retry record returns to the partition number it came from, so the
        # slot that owns main partition p also owns retry partition p.
        TopicSpec(name=names.retry, role=TopicRole.RETRY, partitions=t.partitions, replication_factor=rf,
                  config=main_config),
        TopicSpec(name=names.dlq, role=TopicRole.DLQ, partitions=dlq_partitions, replication_factor=rf,
                  config=dead_config),
        TopicSpec(name=names.results, role=TopicRole.RESULTS, partitions=t.partitions, replication_factor=rf,
                  config=main_config),
        TopicSpec(name=names.parked, role=TopicRole.PARKED, partitions=1, replication_factor=rf,
                  config=dead_config),
    ]


def describe_topics(admin: AdminClient, names: Iterable[str]) -> dict[str, TopicState]:
    """Partitions, leaders and effective configs of the topics that exist (missing ones are left out)."""
    metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    present = [n for n in names if n in metadata.topics and metadata.topics[n].error is None]
    if not present:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in present]
    configs = {res.name: fut.result() for res, fut in admin.describe_configs(resources).items()}
    states = {}
    for name in present:
        parts = metadata.topics[name].partitions
        states[name] = TopicState(
            name=name,
            partitions=len(parts),
            replication_factor=min((len(p.replicas) for p in parts.values()), default=0),
            leaders={p: m.leader for p, m in sorted(parts.items())},
            replicas={p: list(m.replicas) for p, m in sorted(parts.items())},
            isr={p: list(m.isrs) for p, m in sorted(parts.items())},
            config={k: e.value for k, e in configs[name].items() if e.value is not None},
        )
    return states


def diff_topic(spec: TopicSpec, live: TopicState | None) -> TopicDrift:
    """Compare a live topic with its spec. Keys the broker does not report at all are not drift."""
    if live is None:
        return TopicDrift(name=spec.name, missing=True, partitions_desired=spec.partitions,
                          replication_desired=spec.replication_factor)
    return TopicDrift(
        name=spec.name,
        partitions_desired=spec.partitions,
        partitions_live=live.partitions,
        replication_desired=spec.replication_factor,
        replication_live=live.replication_factor,
        configs=[
            ConfigDrift(key=k, desired=v, live=live.config.get(k))
            for k, v in sorted(spec.config.items())
            if k in live.config and live.config[k] != v
        ],
    )


def _kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def _create(admin: AdminClient, spec: TopicSpec, config: dict[str, str], validate_only: bool) -> None:
    topic = NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=spec.replication_factor,
                     config=config)
    fut = admin.create_topics([topic], validate_only=validate_only, operation_timeout=ADMIN_TIMEOUT_S,
                              request_timeout=ADMIN_TIMEOUT_S)[spec.name]
    fut.result()


def _rejected_configs(admin: AdminClient, spec: TopicSpec) -> dict[str, str]:
    """Ask the broker (validate_only) about each config alone, to learn exactly which it rejects."""
    rejected = {}
    for key, value in spec.config.items():
        try:
            _create(admin, spec, {key: value}, validate_only=True)
        except KafkaException as exc:
            err = _kafka_error(exc)
            if err is not None and err.code() in _CONFIG_REJECTIONS:
                rejected[key] = err.str()
    return rejected


def _create_topic(admin: AdminClient, spec: TopicSpec) -> TopicReport:
    dropped: dict[str, str] = {}
    try:
        _create(admin, spec, spec.config, validate_only=False)
    except KafkaException as exc:
        err = _kafka_error(exc)
        if err is None or err.code() not in _CONFIG_REJECTIONS:
            raise _creation_error(spec, exc) from exc
        dropped = _rejected_configs(admin, spec)
        if not dropped:
            raise _creation_error(spec, exc) from exc
        accepted = {k: v for k, v in spec.config.items() if k not in dropped}
        try:
            _create(admin, spec, accepted, validate_only=False)
        except KafkaException as exc2:
            raise _creation_error(spec, exc2) from exc2
    return TopicReport(name=spec.name, role=spec.role, action=TopicAction.CREATED, partitions_before=None,
                       partitions=spec.partitions, replication_factor=spec.replication_factor,
                       config_changes=[ConfigChange(key=k, before=None, after=v) for k, v in
                                       sorted(spec.config.items()) if k not in dropped],
                       dropped_configs=dropped)


def _creation_error(spec: TopicSpec, exc: BaseException) -> ProvisioningError:
    err = _kafka_error(exc)
    hint = ""
    if err is not None and err.code() == KafkaError.INVALID_REPLICATION_FACTOR:
        hint = " Lower CVQ_TOPICS__REPLICATION_FACTOR to at most the number of brokers."
    return ProvisioningError(
        f"could not create topic {spec.name!r} with {spec.partitions} partitions and replication factor "
        f"{spec.replication_factor}: {err.str() if err else exc}.{hint}"
    )


def _alter_configs(admin: AdminClient, name: str, changes: dict[str, str]) -> dict[str, str]:
    """SET the changed keys incrementally; on rejection retry key by key. Returns rejected keys -> reason."""

    def apply(subset: dict[str, str]) -> None:
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in subset.items()]
        resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
        for fut in admin.incremental_alter_configs([resource]).values():
            fut.result()

    try:
        apply(changes)
        return {}
    except KafkaException as exc:
        err = _kafka_error(exc)
        if err is None or err.code() not in _CONFIG_REJECTIONS:
            raise
    rejected = {}
    for key, value in changes.items():
        try:
            apply({key: value})
        except KafkaException as exc:
            err = _kafka_error(exc)
            if err is None or err.code() not in _CONFIG_REJECTIONS:
                raise
            rejected[key] = err.str()
    return rejected


def _converge_topic(admin: AdminClient, spec: TopicSpec, live: TopicState) -> TopicReport:
    if spec.partitions < live.partitions:
        raise ProvisioningError(
            f"topic {spec.name!r} has {live.partitions} partitions but the spec asks for {spec.partitions}; "
            "Kafka cannot remove partitions, and doing it by recreating the topic would lose data. Raise "
            "CVQ_TOPICS__PARTITIONS back to at least the live count, or migrate to a new namespace."
        )
    if spec.role == TopicRole.DLQ and spec.partitions != live.partitions:
        raise ProvisioningError(
            f"DLQ {spec.name!r} has {live.partitions} partitions but the spec asks for {spec.partitions}; DLQ "
            "partitions stand for error categories, so changing their number would file existing dead letters "
            "under the wrong category. Keep CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY, or use a new namespace."
        )
    drift = diff_topic(spec, live)
    changes = {d.key: d.desired for d in drift.configs}
    # Keys missing from the broker's description are keys it does not know or ignores (Redpanda's
    # no-op set, for instance): set them once so a real broker records them, then report what stuck.
    unreported = {k: v for k, v in spec.config.items() if k not in live.config}
    dropped = _alter_configs(admin, spec.name, {**changes, **unreported}) if (changes or unreported) else {}
    if spec.partitions > live.partitions:
        fut = admin.create_partitions([NewPartitions(spec.name, spec.partitions)],
                                      operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S)
        fut[spec.name].result()
    if unreported:
        after = describe_topics(admin, [spec.name]).get(spec.name)
        for key in unreported:
            if key not in dropped and (after is None or key not in after.config):
                dropped[key] = "accepted but not reported by the broker (ignored there)"
    applied = [ConfigChange(key=k, before=live.config.get(k), after=v) for k, v in sorted(changes.items())
               if k not in dropped]
    grew = spec.partitions > live.partitions
    return TopicReport(
        name=spec.name, role=spec.role,
        action=TopicAction.UPDATED if (applied or grew) else TopicAction.UNCHANGED,
        partitions_before=live.partitions, partitions=max(spec.partitions, live.partitions),
        replication_factor=live.replication_factor, config_changes=applied, dropped_configs=dropped,
    )


def wait_until_served(admin: AdminClient, name: str, partitions: int, timeout_s: float = ADMIN_TIMEOUT_S) -> None:
    """Block until the broker's metadata shows the topic with `partitions` led partitions.

    A create or grow is acknowledged by the controller before every broker serves it; returning only
    once it is served means a caller can produce to every partition right away.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        meta = admin.list_topics(name, timeout=ADMIN_TIMEOUT_S).topics.get(name)
        if (meta is not None and meta.error is None and len(meta.partitions) >= partitions
                and all(p.leader >= 0 for p in meta.partitions.values())):
            return
        if time.monotonic() > deadline:
            raise ProvisioningError(f"topic {name!r} was created but is not served after {timeout_s:.0f}s")
        time.sleep(0.1)


def ensure_compacted_topic(admin: AdminClient, name: str, settings: QueueSettings, config: dict[str, str],
                           error: type[Exception], what: str) -> str:
    """Create a one-partition topic the fleet coordinates through (one order; `config` says how it is cleaned up)
    if it is missing, replicated like the queue's topics; another process creating it first is fine. Raises
    `error` naming `what` when the broker refuses."""
    if name in admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics:
        return name
    config = dict(config)
    if "min.insync.replicas" in settings.topics.main_config:
        config["min.insync.replicas"] = settings.topics.main_config["min.insync.replicas"]
    topic = NewTopic(name, num_partitions=1, replication_factor=settings.topics.replication_factor, config=config)
    try:
        admin.create_topics([topic], operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S)[name].result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise error(f"could not create the {what} topic {name!r}: {exc}") from exc
    wait_until_served(admin, name, 1)
    return name


def provision_topic(admin: AdminClient, spec: TopicSpec) -> TopicReport:
    live = describe_topics(admin, [spec.name]).get(spec.name)
    report = _create_topic(admin, spec) if live is None else _converge_topic(admin, spec, live)
    if report.action != TopicAction.UNCHANGED:
        wait_until_served(admin, spec.name, report.partitions)
    return report


def provision(admin: AdminClient, specs: list[TopicSpec]) -> ProvisionReport:
    """Converge every topic onto its spec and report what was created, changed or left alone."""
    return ProvisionReport(topics=[provision_topic(admin, spec) for spec in specs])
