"""Topic assets on a real instance and broker: metadata, drift detected by the check, repair by re-materializing."""

from collections import Counter

import dagster as dg
import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from cv_queue.defs.topics import _acl_rules_of, asset_key, topic_assets, topic_checks
from cv_queue.kafka.admin.acls import acl_rules
from cv_queue.kafka.admin.names import layout_topic
from cv_queue.kafka.admin.topics import TopicRole, topic_specs
from cv_queue.settings import QueueSettings, TopicSettings


def _materializations(result) -> dict:
    return {ev.asset_key: ev.materialization.metadata for ev in result.get_asset_materialization_events()}


def test_materializing_creates_topics_and_records_their_config(resources, instance, settings):
    result = dg.materialize([*topic_assets, *topic_checks], resources=resources, instance=instance)
    assert result.success
    metadata = _materializations(result)
    main = metadata[asset_key(TopicRole.MAIN)]
    assert main["topic"].value == settings.topic_names.main
    assert main["action"].value == "created"
    assert (main["partitions"].value, main["replication_factor"].value) == (8, 1)
    config = {r.data["key"]: r.data["value"] for r in main["config"].value.records}
    assert config == settings.topics.main_config
    leaders = main["leaders"].value.records
    assert [r.data["partition"] for r in leaders] == [str(p) for p in range(8)]
    assert all(int(r.data["leader"]) >= 0 for r in leaders)
    assert {r.data["key"] for r in main["changes"].value.records} == set(settings.topics.main_config)
    assert metadata[asset_key(TopicRole.DLQ)]["partitions"].value == 4
    assert all(c.passed for c in result.get_asset_check_evaluations())
    stored = instance.get_latest_materialization_event(asset_key(TopicRole.RETRY))
    assert stored is not None and stored.asset_materialization.metadata["partitions"].value == 8


def test_drift_fails_the_check_with_the_diff_and_rematerializing_repairs(resources, instance, settings):
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    admin = resources["kafka"].admin()
    entry = ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET)
    for fut in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, settings.topic_names.main,
                                                               incremental_configs=[entry])]).values():
        fut.result()

    checks_only = dg.AssetSelection.all_asset_checks()
    checked = dg.materialize([*topic_assets, *topic_checks], resources=resources, instance=instance,
                             selection=checks_only)
    evaluations = {e.asset_key: e for e in checked.get_asset_check_evaluations()}
    failed = evaluations[asset_key(TopicRole.MAIN)]
    assert not failed.passed
    assert failed.metadata["diff"].value == {"retention.ms": {"spec": "604800000", "live": "60000"}}
    assert all(e.passed for k, e in evaluations.items() if k != asset_key(TopicRole.MAIN))

    repaired = dg.materialize([*topic_assets, *topic_checks], resources=resources, instance=instance)
    main = _materializations(repaired)[asset_key(TopicRole.MAIN)]
    assert main["action"].value == "updated"
    assert [(r.data["key"], r.data["before"], r.data["after"]) for r in main["changes"].value.records] == [
        ("retention.ms", "60000", "604800000")]
    assert all(c.passed for c in repaired.get_asset_check_evaluations())


def test_queue_depth_sensor_records_observations(resources, instance, settings, conn):
    from cv_queue.defs.checks import queue_depth_sensor
    from cv_queue.evaluation.samples import sample_jobs
    from cv_queue.kafka.client.producer import JobProducer

    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    deliveries = JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(40, seed=1))
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = queue_depth_sensor(ctx)
    observed = {e.asset_key: e.metadata for e in result.asset_events if isinstance(e, dg.AssetObservation)}
    main = observed[asset_key(TopicRole.MAIN)]
    assert main["depth"].value == 40
    per_partition = {p: sum(1 for d in deliveries if d.partition == p) for p in range(8)}
    assert {p: main[f"depth_p{p}"].value for p in range(8)} == per_partition
    assert observed[asset_key(TopicRole.DLQ)]["depth"].value == 0
    assert "depth_transient_p0" in observed[asset_key(TopicRole.DLQ)]


@pytest.mark.parametrize("queue", [
    QueueSettings(),
    QueueSettings(namespace="team-a"),
    QueueSettings(namespace="big", topics=TopicSettings(partitions=12, partitions_per_worker=3)),
], ids=["default", "namespaced", "twelve-partitions"])
def test_the_topic_assets_together_apply_every_acl_exactly_once(queue: QueueSettings):
    """With CVQ_TOPICS__APPLY_ACLS each asset applies a share of acl_rules(); a rule no asset takes (the layout
    topic's, which every worker needs at start) would leave a Dagster-provisioned fleet unable to start."""
    applied = Counter(rule for spec in topic_specs(queue) for rule in _acl_rules_of(spec.role, queue, spec.name))
    assert sorted(applied.elements()) == sorted(acl_rules(queue))
    assert any(rule.name == layout_topic(queue) for rule in applied)
