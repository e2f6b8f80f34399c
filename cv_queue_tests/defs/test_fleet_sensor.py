"""The fleet sensor's decisions, evaluated on a real instance: missing topics, missing slots, a stopped fleet."""

import dagster as dg

from cv_queue.defs import tags
from cv_queue.defs.fleet_state import fleet_stopped, set_fleet_stopped
from cv_queue.defs.topics import topic_assets
from cv_queue.defs.workers import SLOTS, worker_fleet_sensor, worker_slot_config


def _tick(instance, resources):
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        return worker_fleet_sensor(ctx)


def test_fleet_sensor_waits_for_topics_then_requests_every_slot(resources, instance):
    waiting = _tick(instance, resources)
    assert waiting.run_requests == [] and "materialize the kafka_topics assets" in waiting.skip_reason.skip_message

    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    requests = _tick(instance, resources).run_requests
    assert [r.partition_key for r in requests] == SLOTS
    assert all(r.tags[tags.WORKER_SLOT] == r.partition_key and r.tags[tags.ROLE] == tags.ROLE_WORKER
               for r in requests)
    config = worker_slot_config.get_run_config_for_partition_key("4-5")
    assert config["ops"]["run_partition_worker"]["config"]["slot"] == "4-5"


def test_a_stopped_fleet_launches_nothing(resources, instance):
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    set_fleet_stopped(instance, True, "run-123")
    assert fleet_stopped(instance)["by_run"] == "run-123"
    skipped = _tick(instance, resources)
    assert skipped.run_requests == [] and "stopped by run run-123" in skipped.skip_reason.skip_message
    set_fleet_stopped(instance, False, "run-456")
    assert fleet_stopped(instance) is None
    assert len(_tick(instance, resources).run_requests) == len(SLOTS)
