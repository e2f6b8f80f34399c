"""Where alerts go: a log line always, a JSON POST to a webhook when one is set, and an optional custom notifier.

Alerts are raised from sensors (a failed worker or replay run, a queue check entering a failing state). A
sensor tick must stay short (the daemon gives it 60 s, and a run-failure sensor handles up to five runs per
tick), so a POST has a small timeout, is tried once, and a failure to post is logged, never raised.
"""

import importlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel, Field

from cv_queue.defs.resources import DEFAULTS

log = logging.getLogger("cv_queue.alerts")
_A = type(DEFAULTS.alerts)
WEBHOOK_VAR = "CVQ_ALERTS__WEBHOOK_URL"


class Alert(BaseModel):
    """One alert, posted as this model's JSON."""

    kind: Literal["run_failure", "asset_check"]
    summary: str = Field(description="One line for a human.")
    severity: Literal["WARN", "ERROR", "OK"] = "ERROR"
    run_id: str | None = None
    job: str | None = None
    slot: str | None = None
    failure_message: str | None = None
    asset: str | None = None
    check: str | None = None
    value: int | None = None
    threshold: int | None = None
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


Notifier = Callable[[Alert], None]


class NotifySeverity(Enum):
    """The least severe failing check state that is notified (a Launchpad choice)."""

    WARN = "WARN"
    ERROR = "ERROR"


def log_notifier(alert: Alert) -> None:
    level = logging.INFO if alert.severity == "OK" else logging.WARNING if alert.severity == "WARN" else logging.ERROR
    log.log(level, "ALERT %s", alert.summary)


class WebhookNotifierError(Exception):
    pass


class WebhookNotifier:
    """POSTs the alert as JSON, once, with a short timeout."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url, self.timeout_s = url, timeout_s

    def __call__(self, alert: Alert) -> None:
        body = json.dumps(alert.model_dump(mode="json", exclude_none=True)).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            # Said without the URL: it may carry a token.
            raise WebhookNotifierError(f"the webhook did not take the alert: {exc}") from exc


def load_notifier(path: str) -> Notifier:
    """'module:attr': a callable taking an Alert, or a class whose no-argument instances are."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"notifier must be 'module:attr', not {path!r}")
    target: Any = getattr(importlib.import_module(module_name), attr)
    return target() if isinstance(target, type) else target


def _setting(name: str) -> Any:
    """A resource field whose default and description are the CVQ_ALERTS__ setting's."""
    return Field(getattr(DEFAULTS.alerts, name), description=_A.model_fields[name].description)


class AlertsResource(dg.ConfigurableResource):
    """Alert thresholds and destinations. Defaults come from the CVQ_ALERTS__* settings."""

    dlq_depth_warn: int = _setting("dlq_depth_warn")
    dlq_depth_error: int = _setting("dlq_depth_error")
    parked_depth_warn: int = _setting("parked_depth_warn")
    parked_depth_error: int = _setting("parked_depth_error")
    consumer_lag_warn: int = _setting("consumer_lag_warn")
    consumer_lag_error: int = _setting("consumer_lag_error")
    notify_severity: NotifySeverity = Field(NotifySeverity(DEFAULTS.alerts.notify_severity),
                                            description=_A.model_fields["notify_severity"].description)
    webhook_url: str | None = Field(None, description="Webhook for alerts: an EnvVar (CVQ_ALERTS__WEBHOOK_URL), "
                                                      "so the UI shows only the variable's name.")
    webhook_timeout_s: float = _setting("webhook_timeout_s")
    notifier: str = _setting("notifier")

    def notifiers(self) -> list[Notifier]:
        chosen: list[Notifier] = [log_notifier]
        if self.webhook_url:
            chosen.append(WebhookNotifier(self.webhook_url, self.webhook_timeout_s))
        if self.notifier:
            chosen.append(load_notifier(self.notifier))
        return chosen

    def notify(self, alert: Alert, logger: logging.Logger | None = None) -> None:
        """Send to every notifier. A failing one is logged (to `logger` too: a sensor's own log shows in the UI)
        and never stops the others or the sensor."""
        for notifier in self.notifiers():
            try:
                notifier(alert)
            except Exception as exc:
                name = getattr(notifier, "__name__", type(notifier).__name__)
                message = f"alert {alert.summary!r} not delivered by {name}: {exc}"
                log.error("%s", message)
                if logger is not None:
                    logger.error(message)

    @classmethod
    def from_env(cls) -> "AlertsResource":
        """The webhook URL, when set, stays an EnvVar reference: it often embeds a token."""
        if os.environ.get(WEBHOOK_VAR):
            return cls(webhook_url=dg.EnvVar(WEBHOOK_VAR))
        return cls()
