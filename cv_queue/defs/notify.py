"""Where alerts go: a log line always, a JSON POST to a webhook when one is set, and an optional custom notifier.

Alerts are raised from sensors (a failed worker or replay run, a queue check entering a failing state). A
sensor tick must stay short (the daemon gives it 60 s, and a run-failure sensor handles up to five runs per
tick), so a POST has a small timeout, is tried once, and a failure to post is logged, never raised.
"""

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from cv_queue.dotted_paths import import_attribute

log = logging.getLogger("cv_queue.alerts")


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
    target: Any = import_attribute(module_name, attr)  # an old path of a module that moved works, deprecated
    return target() if isinstance(target, type) else target
