"""The alerts resource: thresholds and destinations, with the CVQ_ALERTS__* settings as defaults. The alerts and
their notifiers are notify.py's; the checks (checks.py) and the run-failure sensor (alerts.py) notify through this."""

import logging
import os
from enum import Enum
from typing import Any

import dagster as dg
from pydantic import Field

from cv_queue.defs.defaults import DEFAULTS
from cv_queue.defs.notify import Alert, Notifier, WebhookNotifier, load_notifier, log, log_notifier

_A = type(DEFAULTS.alerts)
WEBHOOK_VAR = "CVQ_ALERTS__WEBHOOK_URL"


class NotifySeverity(Enum):
    """The least severe failing check state that is notified (a Launchpad choice)."""

    WARN = "WARN"
    ERROR = "ERROR"


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
