"""The shipped Grafana dashboard and Prometheus rules, read as data: their PromQL, and the cvq_ metrics it names."""

import json
import re
from pathlib import Path

import yaml

from cv_queue_tests.conftest import PROJECT_ROOT

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "cv-queue.json"
PROMETHEUS = PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = PROJECT_ROOT / "deploy" / "prometheus" / "alerts.yml"

METRIC = re.compile(r"\bcvq_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(cvq_[a-z0-9_]+)\s*\{([^}]*)\}")
LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return out


def dashboard_exprs(dashboard: dict | None = None) -> list[str]:
    return [t["expr"] for p in panels(dashboard or load_dashboard()) for t in p.get("targets", [])]


def load_rules(path: Path = ALERTS) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def rule_exprs() -> list[str]:
    return [rule["expr"] for rule in load_rules()]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC.findall(expr)}


def dashboard_metric_names() -> set[str]:
    return metric_names(dashboard_exprs())


def rule_metric_names() -> set[str]:
    return metric_names(rule_exprs())


def labels_used(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The labels each metric is selected on ({name: labels}), and the labels the expression groups by."""
    selected: dict[str, set[str]] = {}
    for name, matchers in SELECTOR.findall(expr):
        selected.setdefault(name, set()).update(LABEL_MATCHER.findall(matchers))
    grouped = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    return selected, grouped
