"""Least-privilege ACLs of the queue's principals, derived from the settings, applied idempotently.

`acl_rules(settings)` is pure: what each principal may do, on the names of the settings' namespace. The same rules
are applied (`apply_acls`), described from the broker (`describe_acls`) and printed as the README's table
(`markdown_table`), so the documentation and the broker cannot disagree.

- cvq-admin provisions: creates and alters the topics, reads the groups' offsets (status, lag). On the local
  secured broker it is also the super user that may create ACLs at all.
- cvq-worker reads the main and retry topics, writes results, retry and DLQ, commits its group's offsets, and uses
  the transactional ids `<ns>.cv-queue-worker-*` (a PREFIXED pattern: every slot of every layout, which start-up
  fencing needs) with idempotent writes. It may describe (never read or write) the DLQ, the parking lot and the
  replay group: a worker's metrics export their depth. With a spend limit it publishes its spend to the spend
  ledger topic and reads the fleet's (it creates the topic when provisioning has not).
- cvq-replayer reads the DLQ, writes the main topic and the parking lot, commits its group and uses its one
  transactional id. It also writes the DLQ (a letter whose category header disagrees with its partition is moved to
  its own category's partitions, sized by the DLQ's max.message.bytes, hence DESCRIBE_CONFIGS there too) and reads
  the DLQ layout record in the layout topic, which it checks at start.
- cvq-producer writes the main topic only (Kafka lets a principal that may write a topic produce idempotently to
  it, so it needs no cluster right).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from pydantic import BaseModel

from cv_queue.kafka.admin.names import (
    layout_reader_group,
    layout_topic,
    presence_group,
    spend_reader_group,
    spend_topic,
)
from cv_queue.settings import QueueSettings

ADMIN = "cvq-admin"
WORKER = "cvq-worker"
REPLAYER = "cvq-replayer"
PRODUCER = "cvq-producer"
PRINCIPALS = (ADMIN, WORKER, REPLAYER, PRODUCER)
CLUSTER_NAME = "kafka-cluster"  # the one name the Cluster resource has
# confluent-kafka names Kafka's CLUSTER resource type (code 4) BROKER; the table and the rules say CLUSTER, as Kafka's
# own tools and Redpanda's rpk do.
_CLIENT_RESOURCE = {"CLUSTER": "BROKER"}
_KAFKA_RESOURCE = {v: k for k, v in _CLIENT_RESOURCE.items()}
ADMIN_TIMEOUT_S = 30.0


class Pattern(StrEnum):
    LITERAL = "LITERAL"
    PREFIXED = "PREFIXED"


@dataclass(frozen=True, order=True)
class AclRule:
    """One allowed operation of one principal on one resource (from any host)."""

    principal: str
    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER
    name: str
    pattern: Pattern
    operation: str  # READ, WRITE, DESCRIBE, ...

    def binding(self) -> AclBinding:
        resource_type = ResourceType[_CLIENT_RESOURCE.get(self.resource, self.resource)]
        return AclBinding(resource_type, self.name, ResourcePatternType[self.pattern.value],
                          f"User:{self.principal}", "*", AclOperation[self.operation], AclPermissionType.ALLOW)


def _rules(principal: str, resource: str, names: Iterable[str], operations: Iterable[str],
           pattern: Pattern = Pattern.LITERAL) -> list[AclRule]:
    ops = list(operations)
    return [AclRule(principal, resource, name, pattern, op) for name in names for op in ops]


def worker_transactional_prefix(settings: QueueSettings) -> str:
    """The prefix of every worker transactional id of the namespace (`<ns>.cv-queue-worker-`)."""
    first = settings.transactional_id(settings.slots()[0])
    return first[: first.rindex("cv-queue-worker-") + len("cv-queue-worker-")]


def acl_rules(settings: QueueSettings) -> list[AclRule]:
    """Every ACL the queue's principals need in the settings' namespace, sorted."""
    t = settings.topic_names
    groups = [settings.group_id, settings.replay_group_id, presence_group(settings), layout_reader_group(settings),
              spend_reader_group(settings)]
    layout, spend = layout_topic(settings), spend_topic(settings)
    rules = [
        *_rules(ADMIN, "TOPIC", [*t.all(), layout, spend],
                ["CREATE", "ALTER", "ALTER_CONFIGS", "DESCRIBE", "DESCRIBE_CONFIGS"]),
        # The spend ledger, summed by the llm_spend asset check.
        *_rules(ADMIN, "TOPIC", [spend], ["READ"]),
        *_rules(ADMIN, "GROUP", [spend_reader_group(settings)], ["READ"]),
        *_rules(ADMIN, "TOPIC", [layout], ["READ", "WRITE"]),  # `fleet relayout` records the new layout
        *_rules(ADMIN, "GROUP", [layout_reader_group(settings)], ["READ"]),
        *_rules(ADMIN, "GROUP", groups, ["DESCRIBE"]),
        *_rules(WORKER, "TOPIC", list(t.consumed), ["READ"]),
        *_rules(WORKER, "TOPIC", [t.results, t.retry, t.dlq], ["WRITE", "DESCRIBE_CONFIGS"]),
        *_rules(WORKER, "TOPIC", [*t.consumed, t.results, t.dlq, t.parked], ["DESCRIBE"]),
        *_rules(WORKER, "GROUP", [settings.group_id], ["READ", "DESCRIBE"]),
        *_rules(WORKER, "GROUP", [settings.replay_group_id], ["DESCRIBE"]),
        # The layout record: read at every start; the very first worker records its layout (and creates the
        # one-partition compacted topic, when provisioning has not).
        *_rules(WORKER, "TOPIC", [layout], ["CREATE", "READ", "WRITE", "DESCRIBE"]),
        *_rules(WORKER, "GROUP", [layout_reader_group(settings)], ["READ", "DESCRIBE"]),
        *_rules(WORKER, "GROUP", [presence_group(settings)], ["READ", "DESCRIBE"]),  # seen alive by `relayout`
        # The spend ledger (llm.spend.limit): each worker publishes its spend and reads the fleet's.
        *_rules(WORKER, "TOPIC", [spend], ["CREATE", "READ", "WRITE", "DESCRIBE"]),
        *_rules(WORKER, "GROUP", [spend_reader_group(settings)], ["READ", "DESCRIBE"]),
        *_rules(WORKER, "TRANSACTIONAL_ID", [worker_transactional_prefix(settings)], ["WRITE", "DESCRIBE"],
                Pattern.PREFIXED),
        *_rules(WORKER, "CLUSTER", [CLUSTER_NAME], ["IDEMPOTENT_WRITE"]),
        # WRITE and DESCRIBE_CONFIGS: a refiled letter goes back to the DLQ, sized by its max.message.bytes.
        *_rules(REPLAYER, "TOPIC", [t.dlq], ["READ", "WRITE", "DESCRIBE_CONFIGS"]),
        # The DLQ layout record (fleet/dlq_layout.py), read at every start; the replayer never writes it.
        *_rules(REPLAYER, "TOPIC", [layout], ["READ", "DESCRIBE"]),
        *_rules(REPLAYER, "GROUP", [layout_reader_group(settings)], ["READ", "DESCRIBE"]),
        *_rules(REPLAYER, "TOPIC", [t.main, t.parked], ["WRITE", "DESCRIBE_CONFIGS"]),
        *_rules(REPLAYER, "TOPIC", [t.dlq, t.main, t.parked], ["DESCRIBE"]),
        *_rules(REPLAYER, "GROUP", [settings.replay_group_id], ["READ", "DESCRIBE"]),
        *_rules(REPLAYER, "TRANSACTIONAL_ID", [settings.replay_transactional_id], ["WRITE", "DESCRIBE"]),
        *_rules(REPLAYER, "CLUSTER", [CLUSTER_NAME], ["IDEMPOTENT_WRITE"]),
        *_rules(PRODUCER, "TOPIC", [t.main, t.interactive], ["WRITE", "DESCRIBE"]),
    ]
    return sorted(set(rules), key=lambda r: (PRINCIPALS.index(r.principal), r.resource, r.name, r.operation))


class ApplyReport(BaseModel):
    created: int
    already_present: int


def _from_binding(binding: AclBinding) -> AclRule | None:
    principal = binding.principal.removeprefix("User:")
    if binding.permission_type != AclPermissionType.ALLOW or binding.host != "*":
        return None
    resource = _KAFKA_RESOURCE.get(binding.restype.name, binding.restype.name)
    return AclRule(principal, resource, binding.name, Pattern(binding.resource_pattern_type.name),
                   binding.operation.name)


def describe_acls(admin: AdminClient, principals: Iterable[str] = PRINCIPALS) -> list[AclRule]:
    """The ALLOW-from-any-host ACLs the broker holds for `principals` (other ACLs are not the queue's)."""
    found: set[AclRule] = set()
    for principal in principals:
        acl_filter = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{principal}", None,
                                      AclOperation.ANY, AclPermissionType.ANY)
        for binding in admin.describe_acls(acl_filter, request_timeout=ADMIN_TIMEOUT_S).result(ADMIN_TIMEOUT_S):
            rule = _from_binding(binding)
            if rule is not None:
                found.add(rule)
    return sorted(found)


def apply_acls(admin: AdminClient, rules: list[AclRule]) -> ApplyReport:
    """Create the rules the broker does not hold yet; applying twice changes nothing the second time."""
    present = set(describe_acls(admin, sorted({r.principal for r in rules})))
    missing = [r for r in rules if r not in present]
    if missing:
        futures = admin.create_acls([r.binding() for r in missing], request_timeout=ADMIN_TIMEOUT_S)
        for future in futures.values():
            future.result(ADMIN_TIMEOUT_S)  # raises KafkaException (e.g. CLUSTER_AUTHORIZATION_FAILED) on denial
    return ApplyReport(created=len(missing), already_present=len(rules) - len(missing))


def grouped(rules: Iterable[AclRule]) -> list[tuple[str, str, str, str, str]]:
    """(principal, resource, name, pattern, operations) rows: one per resource, its operations joined."""
    rows: dict[tuple[str, str, str, str], list[str]] = {}
    for r in rules:
        rows.setdefault((r.principal, r.resource, r.name, r.pattern.value), []).append(r.operation)
    return [(*key, ", ".join(sorted(ops))) for key, ops in rows.items()]


def markdown_table(settings: QueueSettings) -> str:
    """The README's principal/ACL table for these settings."""
    lines = ["| principal | resource | name | pattern | operations |", "|---|---|---|---|---|"]
    rows = grouped(acl_rules(settings))
    lines += [f"| `{principal}` | {res} | `{name}` | {pat} | {ops} |" for principal, res, name, pat, ops in rows]
    return "\n".join(lines)
