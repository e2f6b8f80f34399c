"""A partition_worker launched by hand without a partition (so without the slot tag the one-run-per-slot limit
counts) is refused with a clear message before any worker starts; a run for a partition gets its slot."""

import dagster as dg

from cv_queue.defs import tags
from cv_queue.defs.alerts import worker_and_replay_failure_alert
from cv_queue.defs.alerts_resource import AlertsResource
from cv_queue.defs.fleet_state import set_fleet_stopped
from cv_queue.defs.slots import WORKER_SLOTS
from cv_queue.defs.workers import SLOTS, partition_worker
from cv_queue_tests.defs.webhook import webhook_receiver


def _failure_message(result) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return failure.event_specific_data.error.message


def test_a_worker_run_without_a_partition_is_refused(resources, instance):
    no_slot = partition_worker.execute_in_process(resources=resources, instance=instance, raise_on_error=False)
    config_only = partition_worker.execute_in_process(
        run_config={"ops": {"run_partition_worker": {"config": {"slot": "0-1"}}}}, resources=resources,
        instance=instance, raise_on_error=False)
    for result, slot in ((no_slot, "(none)"), (config_only, "0-1")):
        assert not result.success
        message = _failure_message(result)
        assert "must be launched for a partition" in message
        assert f"slot {slot!r}" in message and f"no {tags.WORKER_SLOT} tag" in message
        assert ", ".join(SLOTS) in message  # it says which partitions there are
        kinds = [e.event_type_value for e in result.all_events]
        assert "STEP_OUTPUT" not in kinds
        logs = " ".join(e.user_message or "" for e in instance.all_logs(result.run_id))
        assert "worker for slot" not in logs  # refused before any worker was built


def test_a_run_for_a_partition_is_accepted(resources, instance, provisioned):
    set_fleet_stopped(instance, True, "test")  # the worker starts, sees the stopped fleet within 3 s, and ends
    instance.add_dynamic_partitions(WORKER_SLOTS.name, SLOTS)  # as the fleet sensor's first tick does
    result = partition_worker.execute_in_process(partition_key="2-3", resources=resources, instance=instance)
    assert result.success
    assert result.dagster_run.tags[tags.WORKER_SLOT] == "2-3"
    logs = " ".join(e.user_message or "" for e in instance.all_logs(result.run_id))
    assert "worker for slot 2-3" in logs and "stopped (fleet stop)" in logs


def test_the_failure_alert_carries_the_steps_reason(resources, instance):
    refused = partition_worker.execute_in_process(resources=resources, instance=instance, raise_on_error=False)
    with webhook_receiver() as hook:
        context = dg.build_run_status_sensor_context(
            sensor_name=worker_and_replay_failure_alert.name, dagster_instance=instance,
            dagster_run=refused.dagster_run, dagster_event=refused.get_run_failure_event(),
            resources={"alerts": AlertsResource(webhook_url=hook.url)}).for_run_failure()
        worker_and_replay_failure_alert(context)
        alert = hook.next(10)["json"]
    assert (alert["run_id"], alert["job"], alert["kind"]) == (refused.run_id, "partition_worker", "run_failure")
    assert "slot" not in alert  # the run had no slot tag: that is why it was refused
    assert alert["failure_message"].startswith("partition_worker runs one slot and must be launched for a partition")
    assert "must be launched for a partition" in alert["summary"]


def test_a_worker_run_takes_the_shutdown_grace_from_the_environment_unless_its_config_sets_one(monkeypatch):
    from cv_queue.defs.workers import WorkerRunConfig, with_run_config
    from cv_queue.settings import QueueSettings

    monkeypatch.setenv("CVQ_WORKER__SHUTDOWN_GRACE_MS", "45000")
    settings = QueueSettings()
    assert with_run_config(settings, WorkerRunConfig(slot="0-1")).worker.shutdown_grace_ms == 45_000
    assert with_run_config(settings, WorkerRunConfig(slot="0-1", shutdown_grace_s=2.5)).worker.shutdown_grace_ms \
        == 2_500
