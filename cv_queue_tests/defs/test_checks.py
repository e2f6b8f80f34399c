"""The queue health checks, evaluated by the depth sensor the way the daemon does it, on a real instance and broker:
over the ERROR threshold a check fails with ERROR, between the thresholds with WARN, under them it passes; the
evaluations land on the topic assets; a check entering and leaving ERROR is posted to the webhook once each."""

import json
import time

import dagster as dg
import pytest
from confluent_kafka import Producer
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from cv_queue.defs.alerts_resource import AlertsResource
from cv_queue.defs.checks import (
    CONSUMER_LAG,
    LLM_SPEND,
    PARKED_DEPTH,
    dlq_check_name,
    queue_depth_sensor,
    queue_health,
)
from cv_queue.defs.dlq import reprocess_dlq
from cv_queue.defs.topics import asset_key, topic_assets
from cv_queue.errors import ErrorCategory, PermanentJobError, RateLimitedError, TransientJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import TopicRole
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.fleet.spend_ledger import SpendLedger, ensure_spend_topic
from cv_queue.kafka.wire.envelope import now_ms
from cv_queue.settings import QueueSettings
from cv_queue_tests.defs.webhook import webhook_receiver
from cv_queue_tests.kafka.test_replay import _plant_letter

THRESHOLDS = {"dlq_depth_warn": 3, "dlq_depth_error": 5, "consumer_lag_warn": 10, "consumer_lag_error": 30}


def _plant(conn, settings, counts: dict[ErrorCategory, tuple[type[Exception], int]]) -> None:
    raw = Producer(conn.client_config())
    for category, (error, count) in counts.items():
        for i in range(count):
            _plant_letter(raw, settings, f"{category.value}-{i}".encode(), error("x"), category, now_ms() - 1000)
    assert raw.flush(10) == 0


def _tick(instance, resources, cursor=None) -> dg.SensorResult:
    """One tick, then what the daemon does with its events: record them on the instance."""
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
        result = queue_depth_sensor(ctx)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def _evaluations(result: dg.SensorResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)}


def _stored(instance, asset: dg.AssetKey, check: str):
    [record] = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(asset, check), limit=1)
    return record


def test_over_threshold_dlq_fails_its_check_with_error_and_is_alerted_once(resources, instance, settings, conn):
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    _plant(conn, settings, {ErrorCategory.PERMANENT: (PermanentJobError, 6),       # above ERROR (5)
                            ErrorCategory.RATE_LIMITED: (RateLimitedError, 4),     # above WARN (3) only
                            ErrorCategory.TRANSIENT: (TransientJobError, 3)})      # not above WARN
    JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(12, seed=3))  # lag 12: WARN
    dlq = asset_key(TopicRole.DLQ)
    with webhook_receiver() as hook:
        resources = {**resources, "alerts": AlertsResource(webhook_url=hook.url, **THRESHOLDS)}
        first = _tick(instance, resources)
        checks = _evaluations(first)

        permanent = checks[dlq_check_name(ErrorCategory.PERMANENT)]
        assert (permanent.passed, permanent.severity) == (False, dg.AssetCheckSeverity.ERROR)
        assert permanent.asset_key == dlq and permanent.metadata["value"].value == 6
        assert "above the ERROR threshold 5" in permanent.description
        rate_limited = checks[dlq_check_name(ErrorCategory.RATE_LIMITED)]
        assert (rate_limited.passed, rate_limited.severity) == (False, dg.AssetCheckSeverity.WARN)
        assert checks[dlq_check_name(ErrorCategory.TRANSIENT)].passed  # 3 is not above the WARN threshold 3
        assert checks[dlq_check_name(ErrorCategory.INVALID_PAYLOAD)].passed
        assert checks[PARKED_DEPTH].passed and checks[PARKED_DEPTH].metadata["value"].value == 0
        lag = checks[CONSUMER_LAG]
        assert (lag.passed, lag.severity, lag.metadata["value"].value) == (False, dg.AssetCheckSeverity.WARN, 12)

        # The daemon records them on the assets, where the UI shows them.
        stored = _stored(instance, dlq, dlq_check_name(ErrorCategory.PERMANENT))
        assert stored.status == AssetCheckExecutionRecordStatus.FAILED
        assert stored.event.asset_check_evaluation.severity == dg.AssetCheckSeverity.ERROR
        transient = _stored(instance, dlq, dlq_check_name(ErrorCategory.TRANSIENT))
        assert transient.status == AssetCheckExecutionRecordStatus.SUCCEEDED

        # Only ERROR is notified by default, once.
        alert = hook.next(10, "the ERROR alert")["json"]
        assert (alert["kind"], alert["check"], alert["severity"]) == ("asset_check", "dlq_depth_permanent", "ERROR")
        assert (alert["value"], alert["threshold"], alert["asset"]) == (6, 5, dlq.to_user_string())
        assert json.loads(first.cursor)["dlq_depth_permanent"] == "ERROR"
        second = _tick(instance, resources, cursor=first.cursor)
        assert not _evaluations(second)[dlq_check_name(ErrorCategory.PERMANENT)].passed
        assert hook.received() == []  # unchanged: no second alert

        # Replaying the permanent letters resolves the check, and that is notified too.
        replay = {"ops": {"reprocess_dead_letters": {"config": {"categories": ["permanent"]}}}}
        assert reprocess_dlq.execute_in_process(run_config=replay, resources=resources, instance=instance).success
        third = _tick(instance, resources, cursor=second.cursor)
        assert _evaluations(third)[dlq_check_name(ErrorCategory.PERMANENT)].passed
        resolved = hook.next(10, "the resolution")["json"]
        assert (resolved["check"], resolved["severity"]) == ("dlq_depth_permanent", "OK")
        assert "resolved" in resolved["summary"]


def test_warn_severity_notifies_warnings_too(resources, instance, settings, conn):
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    _plant(conn, settings, {ErrorCategory.RATE_LIMITED: (RateLimitedError, 4)})
    with webhook_receiver() as hook:
        alerts = AlertsResource(webhook_url=hook.url, notify_severity="WARN", **THRESHOLDS)
        _tick(instance, {**resources, "alerts": alerts})
        alert = hook.next(10, "the WARN alert")["json"]
        assert (alert["check"], alert["severity"], alert["threshold"]) == ("dlq_depth_rate_limited", "WARN", 3)


def test_the_checks_also_run_on_demand(resources, instance, settings, conn):
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    _plant(conn, settings, {ErrorCategory.PERMANENT: (PermanentJobError, 6)})
    resources = {**resources, "alerts": AlertsResource(**THRESHOLDS)}
    result = dg.materialize([*topic_assets, queue_health], resources=resources, instance=instance,
                            selection=dg.AssetSelection.checks(queue_health))
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {*(dlq_check_name(c) for c in ErrorCategory), PARKED_DEPTH, CONSUMER_LAG, LLM_SPEND}
    assert evaluations[LLM_SPEND].passed, "no spend limit: nothing to fail"
    failed = evaluations[dlq_check_name(ErrorCategory.PERMANENT)]
    assert (failed.passed, failed.severity) == (False, dg.AssetCheckSeverity.ERROR)


def test_the_spend_check_reads_the_ledger_warn_then_error(resources, instance, settings, conn, monkeypatch):
    """What workers publish to the spend ledger, summed over workers, graded against CVQ_LLM__SPEND__*."""
    monkeypatch.setenv("CVQ_LLM__SPEND__LIMIT", "2.0")
    monkeypatch.setenv("CVQ_LLM__SPEND__WINDOW_S", "86400")
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    limited = QueueSettings(namespace=settings.namespace)
    ensure_spend_topic(admin_client(conn), limited)
    window = limited.llm.spend.window_start(time.time())
    first, second = SpendLedger(conn, limited, "worker-a"), SpendLedger(conn, limited, "worker-b")

    def spend_check() -> dg.AssetCheckEvaluation:
        result = dg.materialize([*topic_assets, queue_health], resources=resources, instance=instance,
                                selection=dg.AssetSelection.checks(queue_health))
        return {e.check_name: e for e in result.get_asset_check_evaluations()}[LLM_SPEND]

    try:
        first.publish(window, 0.5, 0.0, paused=False)
        first.publish(window - 86400, 5.0, 0.0, paused=True)  # yesterday's spend does not count
        assert spend_check().passed
        second.publish(window, 1.2, 0.0, paused=False)  # 1.7 of 2.0: past warn_at (0.8)
        warn = spend_check()
        assert (warn.passed, warn.severity) == (False, dg.AssetCheckSeverity.WARN)
        assert warn.metadata["value"].value == pytest.approx(1.7)
        first.publish(window, 0.9, 0.0, paused=True)  # the latest total per worker counts; a worker paused
        error = spend_check()
        assert (error.passed, error.severity) == (False, dg.AssetCheckSeverity.ERROR)
        assert error.metadata["value"].value == pytest.approx(2.1)
    finally:
        first.close()
        second.close()
