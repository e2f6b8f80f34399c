"""Provisioning converges a real broker onto the specs: create, repair drift, grow, refuse to shrink, report."""

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from cv_queue.errors import CATEGORY_ORDER
from cv_queue.kafka.admin.topics import (
    ProvisioningError,
    TopicAction,
    TopicRole,
    describe_topics,
    diff_topic,
    provision,
    topic_specs,
)
from cv_queue.kafka.client.clients import admin_client
from cv_queue_tests.support import tuned, wait_for


def test_fresh_create_matches_the_specs(conn, settings):
    admin = admin_client(conn)
    specs = topic_specs(settings)
    report = provision(admin, specs)
    assert report.by_action(TopicAction.CREATED) == settings.topic_names.all()
    live = describe_topics(admin, [s.name for s in specs])
    for spec in specs:
        state = live[spec.name]
        assert state.partitions == spec.partitions
        assert {k: state.config[k] for k in spec.config} == spec.config
        assert not diff_topic(spec, state).drifted
    by_role = {s.role: s for s in specs}
    assert by_role[TopicRole.MAIN].partitions == 8 and by_role[TopicRole.RETRY].partitions == 8
    assert by_role[TopicRole.DLQ].partitions == len(CATEGORY_ORDER)
    assert by_role[TopicRole.MAIN].config["compression.type"] == "snappy"
    again = provision(admin, specs)
    assert again.by_action(TopicAction.UNCHANGED) == settings.topic_names.all()


def test_drift_is_repaired_with_incremental_alter(conn, settings):
    admin = admin_client(conn)
    specs = topic_specs(settings)
    provision(admin, specs)
    main = settings.topic_names.main
    entries = [ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET),
               ConfigEntry("compression.type", "gzip", incremental_operation=AlterConfigOpType.SET)]
    for fut in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, main,
                                                               incremental_configs=entries)]).values():
        fut.result()
    spec = next(s for s in specs if s.name == main)
    expected = {"retention.ms": ("604800000", "1000"), "compression.type": ("snappy", "gzip")}
    seen: dict = {}

    def drift_visible() -> bool:
        # KRaft applies a config change through the metadata log: a describe right after may still see the old one.
        drift = diff_topic(spec, describe_topics(admin, [main])[main])
        seen.update(configs={d.key: (d.desired, d.live) for d in drift.configs})
        return seen["configs"] == expected

    wait_for(drift_visible, 30, "the altered configs to be visible")
    assert seen["configs"] == expected

    report = provision(admin, specs)
    main_report = next(t for t in report.topics if t.name == main)
    assert main_report.action == TopicAction.UPDATED
    assert {(c.key, c.before, c.after) for c in main_report.config_changes} == {
        ("retention.ms", "1000", "604800000"), ("compression.type", "gzip", "snappy")}
    assert not diff_topic(spec, describe_topics(admin, [main])[main]).drifted


def test_partitions_grow_but_never_shrink(conn, settings):
    admin = admin_client(conn)
    provision(admin, topic_specs(settings))
    bigger = tuned(settings, topics={"partitions": 12})
    report = provision(admin, topic_specs(bigger))
    grown = {t.name: (t.partitions_before, t.partitions) for t in report.topics if t.action == TopicAction.UPDATED}
    names = settings.topic_names
    assert grown == {names.main: (8, 12), names.interactive: (8, 12), names.retry: (8, 12), names.results: (8, 12)}
    assert describe_topics(admin, [names.main])[names.main].partitions == 12

    smaller = tuned(settings, topics={"partitions": 4})
    with pytest.raises(ProvisioningError, match="has 12 partitions but the spec asks for 4"):
        provision(admin, topic_specs(smaller))
    assert describe_topics(admin, [names.main])[names.main].partitions == 12


def test_dlq_partition_count_is_never_changed(conn, settings):
    admin = admin_client(conn)
    provision(admin, topic_specs(settings))
    with pytest.raises(ProvisioningError, match="error categories"):
        provision(admin, topic_specs(tuned(settings, topics={"dlq_partitions_per_category": 2})))
    assert describe_topics(admin, [settings.topic_names.dlq])[settings.topic_names.dlq].partitions == 4


def test_rejected_config_is_reported_and_partitions_are_kept(conn, settings):
    admin = admin_client(conn)
    odd = tuned(settings, topics={"main_config": {**settings.topics.main_config, "redpanda.remote.read": "true"}})
    report = provision(admin, topic_specs(odd))
    main = next(t for t in report.topics if t.name == settings.topic_names.main)
    assert main.action == TopicAction.CREATED
    assert set(main.dropped_configs) == {"redpanda.remote.read"}
    assert "redpanda.remote.read" in main.dropped_configs["redpanda.remote.read"] or main.dropped_configs
    live = describe_topics(admin, [main.name])[main.name]
    assert live.partitions == 8  # never the original's silent fallback to 1 partition
    assert live.config["compression.type"] == "snappy"


def test_impossible_replication_factor_is_a_clear_error(conn, settings):
    admin = admin_client(conn)
    with pytest.raises(ProvisioningError, match="REPLICATION_FACTOR"):
        provision(admin, topic_specs(tuned(settings, topics={"replication_factor": 3})))
