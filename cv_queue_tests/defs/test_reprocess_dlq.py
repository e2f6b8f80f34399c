"""reprocess_dlq run in process: it moves the letters, reports counts, and retries per its run config."""

import random
import threading

import dagster as dg
import pytest
from confluent_kafka import Producer

from cv_queue.defs.dlq import ReprocessConfig, reprocess_dead_letters, reprocess_dlq, retry_wait_s
from cv_queue.defs.topics import topic_assets
from cv_queue.errors import ErrorCategory, PermanentJobError, TransientJobError
from cv_queue.kafka.admin.topics import TopicRole, provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.wire.envelope import now_ms
from cv_queue_tests.kafka.test_replay import _plant_letter
from cv_queue_tests.support import read_topic


def _config(**fields) -> dict:
    return {"ops": {"reprocess_dead_letters": {"config": fields}}}


def test_reprocess_dlq_moves_letters_and_reports_counts(resources, instance, settings, conn):
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    raw = Producer(conn.client_config())
    for i in range(5):
        _plant_letter(raw, settings, f"t{i}".encode(), TransientJobError("x"), ErrorCategory.TRANSIENT, now_ms())
    _plant_letter(raw, settings, b"p0", PermanentJobError("x"), ErrorCategory.PERMANENT, now_ms())
    raw.flush(10)

    dry = reprocess_dlq.execute_in_process(run_config=_config(dry_run=True), resources=resources, instance=instance)
    assert dry.success and dry.output_for_node("reprocess_dead_letters")["replayed"] == 5
    assert read_topic(conn, settings.topic_names.main, idle_s=0.5) == []

    result = reprocess_dlq.execute_in_process(run_config=_config(categories=["transient", "permanent"]),
                                              resources=resources, instance=instance)
    assert result.success
    report = result.output_for_node("reprocess_dead_letters")
    assert (report["replayed"], report["parked"], report["scanned"]) == (6, 0, 6)
    assert report["by_category"] == {"permanent": {"replayed": 1}, "transient": {"replayed": 5}}
    [output_event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = output_event.event_specific_data.metadata
    rows = {(r.data["category"], r.data["outcome"]): int(r.data["letters"]) for r in metadata["by_category"].records}
    assert rows == {("permanent", "replayed"): 1, ("transient", "replayed"): 5}
    assert len(read_topic(conn, settings.topic_names.main, expect=6)) == 6


def _enum_choices(config_type) -> list[str]:
    """The values an Enum field offers, through the optional/list wrappers around it."""
    while not hasattr(config_type, "enum_values"):
        config_type = config_type.inner_type
    return sorted(v.config_value for v in config_type.enum_values)


def test_launchpad_choices_refuse_typos_before_a_run_starts(instance):
    for typo in ({"categories": ["permanant"]}, {"retry_backoff": "exponentail"}, {"target": "mian"}):
        with pytest.raises(dg.DagsterInvalidConfigError) as refused:
            dg.validate_run_config(reprocess_dlq, _config(**typo))
        [(field, value)] = typo.items()
        bad = value[0] if isinstance(value, list) else value
        assert "not in enum type" in str(refused.value) and bad in str(refused.value), field
    assert not instance.get_runs()  # validation happens before any run exists
    valid = _config(categories=["permanent", "invalid_payload"], retry_backoff="linear", target="other_topic",
                    target_topic="staging")
    assert dg.validate_run_config(reprocess_dlq, valid)
    fields = reprocess_dead_letters.config_schema.config_type.fields
    choices = {name: _enum_choices(fields[name].config_type) for name in ("target", "retry_backoff", "categories")}
    assert choices == {"target": ["main", "other_topic"], "retry_backoff": ["constant", "exponential", "linear"],
                       "categories": sorted(c.value for c in ErrorCategory)}


def test_other_topic_without_a_name_is_a_clear_failure(resources, instance):
    result = reprocess_dlq.execute_in_process(run_config=_config(target="other_topic"), resources=resources,
                                              instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "target_topic is empty" in failure.event_specific_data.error.message


def test_a_missing_target_topic_fails_the_run_at_once_naming_it(resources, instance, settings, conn):
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    raw = Producer(conn.client_config())
    _plant_letter(raw, settings, b"t0", TransientJobError("x"), ErrorCategory.TRANSIENT, now_ms())
    raw.flush(10)
    typo = f"{settings.topic_names.main}-typo"
    outcome: dict = {}

    def run() -> None:
        outcome["result"] = reprocess_dlq.execute_in_process(
            run_config=_config(target="other_topic", target_topic=typo), resources=resources, instance=instance,
            raise_on_error=False)

    # In a thread, so that the old behaviour (the first transaction redone every few seconds, for ever) fails here.
    runner = threading.Thread(target=run, name="reprocess-dlq", daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the replay into a missing topic is still running after 60 s"
    result = outcome["result"]
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"the replay target {typo!r} does not exist" in failure.event_specific_data.error.message
    assert "STEP_UP_FOR_RETRY" not in [e.event_type_value for e in result.all_events]  # a retry fails the same way
    assert read_topic(conn, typo.removesuffix("-typo"), idle_s=0.5) == []


def test_retries_follow_the_run_config(resources, instance, settings, conn):
    # Only the replay's target exists in this namespace (a missing target fails at once, above): its reads of the
    # DLQ fail, and the step retries as configured.
    provision(admin_client(conn), [spec for spec in topic_specs(settings) if spec.role == TopicRole.MAIN])
    result = reprocess_dlq.execute_in_process(
        run_config=_config(max_retries=2, retry_delay_seconds=0.05, retry_backoff="constant", retry_jitter=False),
        resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    kinds = [e.event_type_value for e in result.all_events]
    assert kinds.count("STEP_UP_FOR_RETRY") == 2
    assert kinds.count("STEP_RESTARTED") == 2
    assert kinds.count("STEP_FAILURE") == 1


def test_retry_delays():
    exponential = ReprocessConfig(retry_delay_seconds=2, retry_backoff="exponential", retry_jitter=False)
    assert [retry_wait_s(exponential, n) for n in range(4)] == [2, 4, 8, 16]
    linear = ReprocessConfig(retry_delay_seconds=2, retry_backoff="linear", retry_jitter=False)
    assert [retry_wait_s(linear, n) for n in range(3)] == [2, 4, 6]
    jittered = ReprocessConfig(retry_delay_seconds=4, retry_backoff="constant", retry_jitter=True)
    waits = [retry_wait_s(jittered, 0, random.Random(i)) for i in range(200)]
    assert all(3 <= w <= 5 for w in waits) and max(waits) - min(waits) > 1
