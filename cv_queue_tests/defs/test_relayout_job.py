"""relayout_worker_fleet on a real instance and broker: it refuses (and restarts the old fleet) while a worker is
alive; otherwise it grows the topics, records the layout, sets the worker_slots partitions and starts the fleet,
whose sensor then launches the new slots."""

import dagster as dg
from confluent_kafka import Producer

from cv_queue.defs.alerts import worker_and_replay_failure_alert
from cv_queue.defs.fleet_state import fleet_stopped
from cv_queue.defs.relayout import RELAYOUT_JOB, relayout_worker_fleet
from cv_queue.defs.slots import WORKER_SLOTS
from cv_queue.defs.topics import topic_assets, topic_checks
from cv_queue.defs.workers import SLOTS, stop_worker_fleet, worker_fleet_sensor
from cv_queue.kafka.admin.topics import describe_topics
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.layout import LAYOUT_KEY, Layout, ensure_layout_topic, read_layout
from cv_queue.kafka.fleet.presence import live_workers
from cv_queue.settings import KafkaConnection, QueueSettings, Slot
from cv_queue_tests.support import start_worker, wait_for

NEW_SLOTS = [f"{p}-{p + 1}" for p in range(0, 16, 2)]


def _tick(instance, resources) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        return worker_fleet_sensor(ctx)


def _relayout(instance, resources, wait_s: float) -> dg.ExecuteInProcessResult:
    return relayout_worker_fleet.execute_in_process(
        run_config={"ops": {"relayout_fleet": {"config": {"partitions": 16, "wait_s": wait_s}}}},
        resources=resources, instance=instance, raise_on_error=False)


def _added(result: dg.SensorResult) -> list[str]:
    return [key for r in result.dynamic_partitions_requests or [] if isinstance(r, dg.AddDynamicPartitionsRequest)
            for key in r.partition_keys]


def test_relayout_job_refuses_while_a_worker_lives_then_grows_and_the_sensor_follows(bootstrap, namespace,
                                                                                      resources, instance):
    conn = KafkaConnection(bootstrap_servers=bootstrap)
    settings = QueueSettings(namespace=namespace)
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    first = _tick(instance, resources)
    assert [r.partition_key for r in first.run_requests] == SLOTS and _added(first) == SLOTS

    worker = start_worker(conn, settings, Slot.parse("0-1"))  # a worker outside Dagster: only the broker sees it
    try:
        # start_worker returns at once; the worker is alive for a re-layout once it is in the presence group.
        wait_for(lambda: bool(live_workers(admin_client(conn), settings)), 60, "the worker to join the presence group")
        refused = _relayout(instance, resources, wait_s=2)
    finally:
        worker.join()
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    assert "still alive" in failure.event_specific_data.error.message and "0-1-of-8x2" in \
        failure.event_specific_data.error.message
    assert fleet_stopped(instance) is None, "a refused re-layout left the fleet stopped"
    main = settings.topic_names.main
    assert describe_topics(admin_client(conn), [main])[main].partitions == 8

    grown = _relayout(instance, resources, wait_s=30)
    assert grown.success
    assert describe_topics(admin_client(conn), [main])[main].partitions == 16
    recorded = read_layout(conn, settings)
    assert recorded is not None and recorded.layout == Layout(partitions=16, partitions_per_worker=2)
    assert sorted(instance.get_dynamic_partitions(WORKER_SLOTS.name)) == sorted(NEW_SLOTS)
    assert fleet_stopped(instance) is None
    logs = " ".join(e.user_message or "" for e in instance.all_logs(grown.run_id))
    for step in ("step 1", "step 2", "step 3", "step 4", "step 5"):
        assert step in logs
    assert f"grew {main} from 8 to 16 partitions" in logs

    after = _tick(instance, resources)
    assert [r.partition_key for r in after.run_requests] == NEW_SLOTS

    # The topic assets follow the recorded layout: materializing them again neither drifts nor tries to shrink.
    again = dg.materialize([*topic_assets, *topic_checks], resources=resources, instance=instance)
    assert again.success
    checks = again.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks), [(c.asset_key, c.metadata) for c in checks if not c.passed]


def test_a_relayout_that_fails_part_way_leaves_the_fleet_stopped_and_says_what_to_run(bootstrap, namespace,
                                                                                     resources, instance):
    """Not a refusal (here an unreadable layout record): the flag stays set, since the topics may have grown, and
    the failure says so and names the way out; the failure alert watches this job and stop_worker_fleet."""
    conn = KafkaConnection(bootstrap_servers=bootstrap)
    settings = QueueSettings(namespace=namespace)
    name = ensure_layout_topic(admin_client(conn), settings)
    producer = Producer(conn.client_config())
    producer.produce(name, key=LAYOUT_KEY, value=b"not a layout record")
    assert producer.flush(30) == 0

    failed = _relayout(instance, resources, wait_s=5)
    assert not failed.success
    message = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"
                   ).event_specific_data.user_failure_data.description
    assert "left STOPPED" in message and f"Re-run {RELAYOUT_JOB} with the same config" in message
    assert "start_worker_fleet if nothing changed" in message
    assert fleet_stopped(instance) is not None, "the fleet must stay stopped after a part-way failure"
    assert _tick(instance, resources).run_requests in (None, []), "the sensor launched workers of a stopped fleet"
    monitored = {job.name for job in worker_and_replay_failure_alert._monitored_jobs}
    assert {RELAYOUT_JOB, stop_worker_fleet.name} <= monitored
