"""The notifiers against a real HTTP server on loopback: the payload, a slow or dead endpoint never raising and never
holding a sensor longer than the timeout, a custom notifier; and the pure rules deciding what is alerted or logged."""

import logging
import time

import dagster as dg

from cv_queue.defs.alerts import run_failure_alert
from cv_queue.defs.alerts_resource import AlertsResource
from cv_queue.defs.checks import check_alerts, grade
from cv_queue.defs.notify import Alert
from cv_queue.defs.workers import ProgressLog
from cv_queue_tests.defs.webhook import webhook_receiver
from cv_queue_tests.support import free_port_block

RECEIVED: list[Alert] = []


def collecting_notifier(alert: Alert) -> None:
    """A custom notifier, loaded by dotted path."""
    RECEIVED.append(alert)


def _alert() -> Alert:
    return Alert(kind="run_failure", summary="partition_worker (slot 2-3) run r1 failed: boom", run_id="r1",
                 job="partition_worker", slot="2-3", failure_message="boom")


def test_webhook_gets_the_alert_as_json():
    with webhook_receiver() as hook:
        AlertsResource(webhook_url=hook.url).notify(_alert())
        post = hook.next(10)
    assert post["path"] == "/alerts" and post["content_type"] == "application/json"
    assert {k: post["json"][k] for k in ("kind", "run_id", "job", "slot", "failure_message", "severity")} == {
        "kind": "run_failure", "run_id": "r1", "job": "partition_worker", "slot": "2-3", "failure_message": "boom",
        "severity": "ERROR"}


def test_a_slow_or_dead_webhook_is_logged_and_never_raises(caplog):
    caplog.set_level(logging.ERROR, logger="cv_queue.alerts")
    with webhook_receiver(delay_s=5) as slow:
        started = time.monotonic()
        AlertsResource(webhook_url=slow.url, webhook_timeout_s=0.5).notify(_alert())
        assert time.monotonic() - started < 3  # the timeout, not the endpoint's 5 s
    dead = f"http://127.0.0.1:{free_port_block(width=1)}/alerts"  # nothing listens there
    AlertsResource(webhook_url=dead).notify(_alert())
    with webhook_receiver(status=500) as failing:
        AlertsResource(webhook_url=failing.url).notify(_alert())
    undelivered = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(undelivered) == 3, undelivered
    assert all("127.0.0.1" not in m for m in undelivered)  # the URL (it may hold a token) is never logged


def test_a_custom_notifier_by_dotted_path_runs_beside_the_log_line(caplog):
    caplog.set_level(logging.WARNING, logger="cv_queue.alerts")
    RECEIVED.clear()
    AlertsResource(notifier=f"{__name__}:collecting_notifier").notify(_alert())
    assert [a.run_id for a in RECEIVED] == ["r1"]
    assert any("ALERT partition_worker (slot 2-3)" in r.getMessage() for r in caplog.records)


def test_run_failure_alert_names_the_run_job_and_slot():
    run = dg.DagsterRun(job_name="partition_worker", run_id="abc", tags={"cv-queue/worker-slot": "4-5"})
    alert = run_failure_alert(run, "Run execution process was terminated by signal 9 (SIGKILL).\nmore")
    assert (alert.run_id, alert.job, alert.slot) == ("abc", "partition_worker", "4-5")
    assert alert.summary == "partition_worker (slot 4-5) run abc failed: Run execution process was terminated by " \
                            "signal 9 (SIGKILL)."


def _evaluation(name: str, state: str) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(["a"]), check_name=name, passed=state == "OK", description=f"{name} is {state}",
        severity=dg.AssetCheckSeverity.WARN if state == "WARN" else dg.AssetCheckSeverity.ERROR,
        metadata={"value": 9, "warn_above": 3, "error_above": 5})


def test_checks_alert_on_entering_and_leaving_the_notified_severity():
    assert [grade(v, 3, 5) for v in (0, 3, 4, 5, 6)] == ["OK", "OK", "WARN", "WARN", "ERROR"]
    now = [_evaluation("x", "ERROR"), _evaluation("y", "WARN"), _evaluation("z", "OK")]
    first = check_alerts({}, now, "ERROR")  # first tick: an already failing check is reported once
    assert [(a.check, a.severity) for a in first] == [("x", "ERROR")]
    assert check_alerts({"x": "ERROR", "y": "WARN", "z": "OK"}, now, "ERROR") == []
    down = check_alerts({"x": "ERROR"}, [_evaluation("x", "WARN")], "ERROR")
    assert [(a.check, a.severity, "resolved" in a.summary) for a in down] == [("x", "WARN", True)]
    assert [a.check for a in check_alerts({}, now, "WARN")] == ["x", "y"]


def test_progress_is_logged_on_change_and_at_most_once_a_minute_when_idle():
    progress = ProgressLog()
    reports = [(0, "a"), (10, "a"), (20, "b"), (30, "b"), (79, "b"), (80, "b"), (90, "b"), (95, "c"), (100, "c")]
    logged = [t for t, summary in reports if progress.due(summary, t)]
    assert logged == [0, 20, 80, 95]
