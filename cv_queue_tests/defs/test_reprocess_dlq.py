"""reprocess_dlq run in process: it moves the letters, reports counts, and retries per its run config."""

import random

import dagster as dg
from confluent_kafka import Producer

from cv_queue.defs.dlq import ReprocessConfig, reprocess_dlq, retry_wait_s
from cv_queue.defs.topics import topic_assets
from cv_queue.errors import ErrorCategory, PermanentJobError, TransientJobError
from cv_queue.kafka.envelope import now_ms
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


def test_bad_category_is_a_clear_failure(resources, instance):
    result = reprocess_dlq.execute_in_process(run_config=_config(categories=["sideways"]), resources=resources,
                                              instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "sideways" in failure.event_specific_data.error.message


def test_retries_follow_the_run_config(resources, instance):
    # No topics in this namespace: the replay's broker calls fail, and the step retries as configured.
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
