"""How many workers share the provider's quota, told to a handler that keeps a budget of it; and that budget's
figures, for /metrics.

A handler with `set_fleet_size(n)` and a `budget` (LLMEvaluator: cv_queue/evaluation/llm/budget.py) takes 1/n of each
model's limits. n is the presence group's member count (every live worker: CLI, Dagster run or pod, whatever its
slot), read every `llm.budget.fleet_refresh_s` on a thread of its own, so that survivors take the budget of workers
that left, and newcomers get theirs (the budget is thread-safe). The first count is taken before the worker starts
its first job, so a fleet starting together does not each spend a burst of the whole fleet's limit. A count that
cannot be read keeps the last one (and is logged): the thread never dies of it.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.presence import live_workers
from cv_queue.kafka.metrics.recorder import BudgetFigures, WorkerMetrics
from cv_queue.settings import KafkaConnection, QueueSettings

log = logging.getLogger("cv_queue.worker")


class FleetShare:
    def __init__(self, conn: KafkaConnection, settings: QueueSettings, set_fleet_size: Callable[[int], None]) -> None:
        self._conn = conn
        self._settings = settings
        self._set_fleet_size = set_fleet_size
        self._admin = admin_client(conn)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cvq-fleet-share", daemon=True)
        self.fleet_size: int | None = None

    @classmethod
    def for_handler(cls, handler: Any, conn: KafkaConnection, settings: QueueSettings,
                    metrics: WorkerMetrics) -> "FleetShare | None":
        """The share keeper of a handler that keeps a budget (its figures exported with `metrics`), else None."""
        budget = getattr(handler, "budget", None)
        set_fleet_size = getattr(handler, "set_fleet_size", None)
        if budget is None or not callable(set_fleet_size):
            return None
        model = str(getattr(getattr(handler, "settings", None), "model", "unknown"))
        metrics.budget = lambda: BudgetFigures(
            model=model, requests=budget.granted_requests, tokens=budget.granted_tokens,
            share=budget.factor / budget.fleet_size, held=int(getattr(handler, "held", 0)),
            rate_limited=int(getattr(handler, "rate_limited", 0)), cost=float(getattr(handler, "cost", 0.0)))
        return cls(conn, settings, set_fleet_size)

    def start(self) -> None:
        """Count once now (the worker has joined the presence group), then every fleet_refresh_s."""
        self._count()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _count(self) -> None:
        interval = self._settings.llm.budget.fleet_refresh_s
        try:
            size = len(live_workers(self._admin, self._settings, timeout_s=max(5.0, interval)))
        except Exception as exc:  # a broker hiccup, or a bug of ours: the share stays, the counting goes on
            log.warning("could not count the live workers (%s); keeping %s", exc, self.fleet_size)
            return
        if size and size != self.fleet_size:
            log.info("%d live worker(s) share the provider's quota", size)
            self.fleet_size = size
            self._set_fleet_size(size)

    def _run(self) -> None:
        interval = self._settings.llm.budget.fleet_refresh_s
        while not self._stop.wait(interval):
            self._count()
