"""How many workers share the provider's quota and what the fleet has spent, told to a handler that keeps a budget;
and that budget's figures, for /metrics.

A handler with `set_fleet_size(n)` and a `budget` (LLMEvaluator: cv_queue/evaluation/llm/budget.py) takes 1/n of each
model's limits. n is the presence group's member count (every live worker: CLI, Dagster run or pod, whatever its
slot), read every `llm.budget.fleet_refresh_s` on a thread of its own, so that survivors take the budget of workers
that left, and newcomers get theirs (the budget is thread-safe). The first count is taken before the worker starts
its first job, so a fleet starting together does not each spend a burst of the whole fleet's limit.

A handler whose `spend` gate has a limit (llm.spend.limit: evaluation/llm/spend.py) also gets the rest of the
fleet's spend: the same thread publishes this worker's spend of the current window to the spend ledger
(fleet/spend_ledger.py) and reads everybody's, every `llm.spend.refresh_s`. The worker pauses intake while the gate is
closed (`spend_exhausted`).

A count or ledger that cannot be read keeps the last figures (and is logged): the thread never dies of it.
"""

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.presence import live_workers
from cv_queue.kafka.fleet.spend_ledger import SpendLedger, SpendLedgerError, ensure_spend_topic
from cv_queue.kafka.metrics.recorder import BudgetFigures, WorkerMetrics
from cv_queue.settings import KafkaConnection, QueueSettings

log = logging.getLogger("cv_queue.worker")


class FleetShare:
    def __init__(self, conn: KafkaConnection, settings: QueueSettings, set_fleet_size: Callable[[int], None],
                 spend: Any = None, worker_id: str = "") -> None:
        self._conn = conn
        self._settings = settings
        self._set_fleet_size = set_fleet_size
        self._admin = admin_client(conn)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cvq-fleet-share", daemon=True)
        self.fleet_size: int | None = None
        self._spend = spend if spend is not None and getattr(spend, "limited", False) else None
        self._worker_id = worker_id
        self._ledger: SpendLedger | None = None
        self._paused_window: int | None = None  # the window whose pause was logged

    @classmethod
    def for_handler(cls, handler: Any, conn: KafkaConnection, settings: QueueSettings,
                    metrics: WorkerMetrics, worker_id: str = "") -> "FleetShare | None":
        """The share keeper of a handler that keeps a budget (its figures exported with `metrics`), else None."""
        budget = getattr(handler, "budget", None)
        set_fleet_size = getattr(handler, "set_fleet_size", None)
        if budget is None or not callable(set_fleet_size):
            return None
        model = str(getattr(getattr(handler, "settings", None), "model", "unknown"))
        spend = getattr(handler, "spend", None)
        limited = spend is not None and getattr(spend, "limited", False)
        metrics.budget = lambda: BudgetFigures(
            model=model, requests=budget.granted_requests, tokens=budget.granted_tokens,
            share=budget.factor / budget.fleet_size, held=int(getattr(handler, "held", 0)),
            rate_limited=int(getattr(handler, "rate_limited", 0)), cost=float(getattr(handler, "cost", 0.0)),
            spend_window=spend.spent() if limited else None, spend_paused=limited and spend.wait_s() > 0)
        return cls(conn, settings, set_fleet_size, spend, worker_id)

    def start(self) -> None:
        """Count once now (the worker has joined the presence group), read the ledger once, then go on in the
        background."""
        self._count()
        if self._spend is not None:
            ensure_spend_topic(self._admin, self._settings)
            # Unique per process: a restarted process with the same id (same host name, pid 1 in a container)
            # must not overwrite its predecessor's total.
            self._ledger = SpendLedger(self._conn, self._settings, f"{self._worker_id}#{secrets.token_hex(4)}")
            # The first read must succeed before the first job: a worker that took the fleet's spend for 0 could
            # spend a whole limit again after a redeploy. A ledger it cannot read stops the start, loudly.
            if not self._sync_spend():
                self._ledger.close()
                raise SpendLedgerError(f"could not read the spend ledger {self._ledger.topic} at start (see the "
                                       "warning above); the worker does not start without the fleet's spend")
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; it publishes this worker's last spend first (waited for up to `timeout_s`)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

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

    def _sync_spend(self) -> bool:
        """Publish this worker's spend of the current window, and take in the rest of the fleet's (False when the
        ledger could not be read). Publishing and reading fail apart: a worker that may not write still learns."""
        assert self._spend is not None and self._ledger is not None
        window = self._spend.current_window()
        spent, reserved = self._spend.published(window)
        try:
            self._ledger.publish(window, spent, reserved, self._spend.closed(window))
        except Exception as exc:  # the broker, ACLs, or a bug of ours: the others see this worker's last figures
            log.warning("could not publish to the spend ledger (%s); the fleet sees this worker's last figures", exc)
        try:
            self._ledger.refresh()
        except Exception as exc:  # likewise: the last figures stay, and so does this worker's share
            log.warning("could not read the spend ledger (%s); the fleet's spend is as last read", exc)
            return False
        others = self._ledger.others(window)
        self._spend.set_others(window, others.spent, others.reserved)
        if self._spend.closed(window) and self._paused_window != window:
            self._paused_window = window
            log.warning("the fleet has spent %.4f of llm.spend.limit=%g in this window: intake paused until the "
                        "next window", self._spend.spent(window), self._settings.llm.spend.limit)
        return True

    def _run(self) -> None:
        count_every = self._settings.llm.budget.fleet_refresh_s
        spend_every = self._settings.llm.spend.refresh_s
        next_count = time.monotonic() + count_every
        next_spend = time.monotonic() + spend_every
        while not self._stop.wait(max(0.0, min(next_count, next_spend if self._ledger else next_count)
                                      - time.monotonic())):
            now = time.monotonic()
            if now >= next_count:
                self._count()
                next_count = now + count_every
            if self._ledger is not None and now >= next_spend:
                self._sync_spend()
                next_spend = now + spend_every
        if self._ledger is not None:
            try:
                self._sync_spend()  # the last figures, so that a worker stopping leaves its whole spend behind
            finally:
                self._ledger.close()
