"""Topic assets: materializing one provisions its topic (create, repair, grow) and records what it is.

Each asset has a `config_drift` check that fails, with the diff, when the live topic no longer matches
its spec. Depth observations and the queue health checks are in checks.py.

With `topics.apply_acls` on (CVQ_TOPICS__APPLY_ACLS, off by default) an asset first applies the principals' ACLs
on its topic (the main topic's asset also those on the groups, transactional ids, cluster and layout topic) and
then provisions it: a topic that exists has its ACLs, so a worker the fleet sensor starts once every topic exists
is allowed in.

The DLQ's asset also checks the recorded DLQ layout (kafka/fleet/dlq_layout.py) before it provisions, and records it
when none is: settings that would file letters under other categories fail the materialization, naming both layouts.
"""

import dagster as dg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from cv_queue.defs.resources import KafkaResource, Principal, QueueResource, access_failure
from cv_queue.kafka.admin.acls import AclRule, acl_rules, apply_acls
from cv_queue.kafka.admin.topics import TopicRole, TopicSpec, describe_topics, diff_topic, provision_topic, topic_specs
from cv_queue.kafka.client.auth import KafkaAuthorizationError, authorization_code, denied
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.dlq_layout import DlqLayoutMismatchError, check_dlq_layout
from cv_queue.kafka.fleet.layout import adopt_recorded_layout
from cv_queue.settings import QueueSettings

GROUP = "kafka_topics"
ASSET_NAMES = {
    TopicRole.MAIN: "evaluate_jobs",
    TopicRole.INTERACTIVE: "evaluate_jobs_interactive",
    TopicRole.RETRY: "evaluate_jobs_retry",
    TopicRole.DLQ: "evaluate_jobs_dlq",
    TopicRole.RESULTS: "evaluate_results",
    TopicRole.PARKED: "evaluate_jobs_parked",
}
DESCRIPTIONS = {
    TopicRole.MAIN: "Jobs to evaluate: 8 partitions, the seed's configs, consumed by the worker slots.",
    TopicRole.INTERACTIVE: "The interactive lane: jobs started before the main topic's when the provider's budget "
    "is tight; laid out like the main topic, read by the same slots.",
    TopicRole.RETRY: "Failed jobs waiting for their next delivery (cvq.retry.due.at); same partition count.",
    TopicRole.DLQ: "Dead letters with full provenance headers, partitioned by error category.",
    TopicRole.RESULTS: "One result per job, written exactly once in the worker's transactions.",
    TopicRole.PARKED: "Dead letters replayed too often (or undecodable): kept for a human.",
}


def unprovisioned(admin: AdminClient, settings: QueueSettings) -> list[str]:
    """Queue topics missing on the broker: sensors skip, saying so, rather than erroring before provisioning."""
    present = admin.list_topics(timeout=5).topics
    return [name for name in settings.topic_names.all() if name not in present]


def skip_until_provisioned(missing: list[str]) -> dg.SensorResult:
    return dg.SensorResult(skip_reason=dg.SkipReason(
        f"topics {missing} do not exist yet: materialize the kafka_topics assets first"))


def asset_key(role: TopicRole) -> dg.AssetKey:
    return dg.AssetKey([GROUP, ASSET_NAMES[role]])


def layout_settings(kafka: KafkaResource, queue: QueueResource) -> QueueSettings:
    """The queue's settings with the recorded layout's partition count, once one is recorded: after a re-layout
    (kafka/fleet/relayout.py) the specs follow the grown topics, so the drift checks pass and a materialization never
    asks to shrink them back to CVQ_TOPICS__PARTITIONS."""
    return adopt_recorded_layout(kafka.connection(), kafka.admin(), queue.settings(kafka))


def _spec(role: TopicRole, kafka: KafkaResource, queue: QueueResource) -> TopicSpec:
    return next(s for s in topic_specs(layout_settings(kafka, queue)) if s.role == role)


def _acl_rules_of(role: TopicRole, settings: QueueSettings, topic: str) -> list[AclRule]:
    """The ACLs this asset applies: its topic's, and for the main topic every rule no other asset applies (groups,
    transactional ids, the cluster, and topics that are not one of the queue's six, such as the layout topic every
    worker reads at start). Over the six assets each rule of acl_rules() is applied exactly once."""
    rules = acl_rules(settings)
    if role == TopicRole.MAIN:
        others = set(settings.topic_names.all()) - {topic}
        return [r for r in rules if r.resource != "TOPIC" or r.name not in others]
    return [r for r in rules if r.resource == "TOPIC" and r.name == topic]


def _acl_metadata(admin: AdminClient, role: TopicRole, settings: QueueSettings, topic: str) -> dict:
    """Apply this asset's ACLs; the metadata records counts and rules (principals and operations, never a secret)."""
    rules = _acl_rules_of(role, settings, topic)
    report = apply_acls(admin, rules)
    return {
        "acls_applied": len(rules),
        "acls_created": report.created,
        "acls": _table([{"principal": r.principal, "resource": r.resource, "name": r.name, "pattern": r.pattern,
                         "operation": r.operation} for r in rules],
                       ["principal", "resource", "name", "pattern", "operation"]),
    }


def _table(rows: list[dict], columns: list[str]) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: str(r[c]) for c in columns}) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
    )


def _topic_asset(role: TopicRole) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    @dg.asset(key=asset_key(role), group_name=GROUP, kinds={"kafka"}, description=DESCRIPTIONS[role],
              metadata={"role": role.value})
    def topic(context: dg.AssetExecutionContext, kafka: KafkaResource, queue: QueueResource) -> dg.MaterializeResult:
        conn = kafka.check_access(Principal.ADMIN)  # a refused login fails within seconds, naming the cause
        settings = layout_settings(kafka, queue)
        spec = next(s for s in topic_specs(settings) if s.role == role)
        admin = admin_client(conn)
        try:
            acls = _acl_metadata(admin, role, settings, spec.name) if settings.topics.apply_acls else {}
            if role == TopicRole.DLQ:
                check_dlq_layout(conn, admin, settings, record=True)
            report = provision_topic(admin, spec)
        except DlqLayoutMismatchError as exc:
            raise dg.Failure(description=str(exc)) from exc
        except KafkaAuthorizationError as exc:  # the layout topic, named
            raise access_failure(exc, Principal.ADMIN) from exc
        except KafkaException as exc:
            if authorization_code(exc) is None:
                raise
            raise access_failure(denied(exc, conn, spec.name, "DESCRIBE, CREATE, ALTER or create ACLs on"),
                                 Principal.ADMIN) from exc
        state = describe_topics(admin, [spec.name])[spec.name]
        for key, reason in report.dropped_configs.items():
            context.log.warning(f"{spec.name}: config {key} was not applied: {reason}")
        changes = [{"key": c.key, "before": c.before or "(new)", "after": c.after} for c in report.config_changes]
        if report.partitions_before is not None and report.partitions_before != report.partitions:
            changes.insert(0, {"key": "partitions", "before": report.partitions_before, "after": report.partitions})
        return dg.MaterializeResult(metadata={
            "topic": spec.name,
            "action": report.action.value,
            "partitions": state.partitions,
            "replication_factor": state.replication_factor,
            "config": _table([{"key": k, "value": state.config.get(k, "(not reported)")} for k in sorted(spec.config)],
                             ["key", "value"]),
            "leaders": _table([{"partition": p, "leader": b, "replicas": state.replicas[p], "isr": state.isr[p]}
                               for p, b in state.leaders.items()], ["partition", "leader", "replicas", "isr"]),
            "changes": _table(changes, ["key", "before", "after"]),
            "dropped_configs": dg.MetadataValue.json(report.dropped_configs),
            **acls,
        })

    @dg.asset_check(asset=topic, name="config_drift", description="The live topic matches its spec.")
    def drift_check(kafka: KafkaResource, queue: QueueResource) -> dg.AssetCheckResult:
        spec = _spec(role, kafka, queue)
        drift = diff_topic(spec, describe_topics(kafka.admin(), [spec.name]).get(spec.name))
        diff = {d.key: {"spec": d.desired, "live": d.live} for d in drift.configs}
        if drift.missing:
            diff["topic"] = {"spec": "exists", "live": "missing"}
        if not drift.missing and drift.partitions_live != drift.partitions_desired:
            diff["partitions"] = {"spec": drift.partitions_desired, "live": drift.partitions_live}
        if not drift.missing and drift.replication_live != drift.replication_desired:
            diff["replication_factor"] = {"spec": drift.replication_desired, "live": drift.replication_live}
        return dg.AssetCheckResult(
            passed=not drift.drifted,
            metadata={"topic": spec.name, "diff": dg.MetadataValue.json(diff)},
            description="no drift" if not diff else f"{len(diff)} difference(s); re-materialize to repair",
        )

    return topic, drift_check


_BUILT = [_topic_asset(role) for role in TopicRole]
topic_assets = [asset for asset, _ in _BUILT]
topic_checks = [check for _, check in _BUILT]
