"""The dashboard and the alert rules, checked against the metrics the code declares (promtool is not installed
here, and downloading it is not an option: the rules are parsed and checked name by name instead).

That each of these metrics is actually served over HTTP after a real workload is shown in test_endpoints.py.
"""

import pytest

from cv_queue.kafka.metrics.families import sample_names
from cv_queue_tests.metrics.dashboards import (
    dashboard_exprs,
    labels_used,
    load_dashboard,
    load_rules,
    metric_names,
    panels,
    rule_exprs,
)

DECLARED = sample_names()
TARGET_LABELS = {"instance", "job", "dagster_run_id"}  # added by Prometheus and the scrape config


def _check_expr(expr: str) -> None:
    names = metric_names([expr])
    assert names, f"names no cvq_ metric: {expr}"
    unknown = names - DECLARED.keys()
    assert not unknown, f"{expr} names metrics the code does not declare: {unknown}"
    selected, grouped = labels_used(expr)
    for name, labels in selected.items():
        assert labels <= set(DECLARED[name]) | TARGET_LABELS, f"{expr}: {name} has no label(s) {labels}"
    available = set().union(*(DECLARED[n] for n in names)) | TARGET_LABELS
    assert grouped <= available, f"{expr} groups by labels none of its metrics has: {grouped - available}"


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_queries_name_declared_metrics_and_labels(expr):
    _check_expr(expr)


@pytest.mark.parametrize("expr", rule_exprs())
def test_alert_rules_name_declared_metrics_and_labels(expr):
    _check_expr(expr)


def test_dashboard_is_well_formed_and_uses_the_provisioned_datasource():
    dashboard = load_dashboard()
    assert dashboard["uid"] == "cv-queue"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "cvq-prometheus"
        assert all(t["datasource"]["uid"] == "cvq-prometheus" for t in panel["targets"])
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_dashboard_shows_what_the_issue_asks_for():
    shown = metric_names(dashboard_exprs())
    wanted = {
        "cvq_records_consumed_total", "cvq_jobs_succeeded_total", "cvq_jobs_retried_total",
        "cvq_jobs_dead_lettered_total", "cvq_jobs_in_flight", "cvq_jobs_buffered", "cvq_held_bytes",
        "cvq_retries_waiting", "cvq_handler_duration_seconds_bucket", "cvq_job_latency_seconds_bucket",
        "cvq_transactions_committed_total", "cvq_transactions_aborted_total",
        "cvq_transaction_commit_duration_seconds_bucket", "cvq_consumer_lag", "cvq_dlq_depth", "cvq_parked_depth",
        "cvq_dlq_replayed_total", "cvq_dlq_parked_total", "cvq_llm_tokens_total",
    }
    assert wanted - shown == set()


def test_alert_rules_are_well_formed():
    rules = load_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        if "for" in rule:
            assert rule["for"][-1] in "smh" and int(rule["for"][:-1]) > 0
    alerted = metric_names(rule_exprs())
    # The conditions the issue names: the DLQ filling, a worker dying, and the asset checks' depths.
    assert {"cvq_dlq_depth", "cvq_worker_running", "cvq_parked_depth", "cvq_consumer_lag"} <= alerted
