"""What the fleet has spent in the current window, against llm.spend.limit: the gate that pauses intake.

Windows are aligned to the Unix epoch (a UTC day by default), so every worker, and the Dagster check, agree on
which window a cost belongs to without talking to each other.

- A call reserves its most expensive outcome before it starts (its estimated prompt and all of max_tokens, at
  llm.prices; never more than the limit itself), and settles to what its usage says when it comes back. So a burst
  of calls started together cannot overshoot the limit by what they cost before the first one answers.
- A worker knows its own spend exactly, and the rest of the fleet's from the spend ledger topic
  (cv_queue/kafka/fleet/spend_ledger.py), read every `llm.spend.refresh_s`. Spend and reservations are published
  apart: only spend closes a window; reservations only make a job wait for calls in flight to settle.
- Between two looks at the ledger, a worker spends at most its share of what the window had left at the last one
  (1 / live workers of it, or one job), so that workers do not each spend all of it before the ledger tells them
  of the others. Each look renews the share, so the busy workers take what idle ones leave within a few looks.
- Once a job does not fit in what the window has left, or the spend reaches the limit, the gate is closed until
  the window ends: no new job starts, the worker pauses its partitions, and nothing is failed. Calls of jobs
  already started (repairs) still run. A job whose worst case is the whole limit runs only in a window nothing
  else has spent in.
- The fleet can overspend by about one job per other worker, by what they spent since their last publication, and
  by what an estimate missed (a CV read from a file is learned, not measured, before its call).

Thread-safe: the event loop reserves and settles, the ledger thread sets the others' figures, the metrics thread
reads them.
"""

import threading
import time
from collections.abc import Callable

from cv_queue.quota_settings import SpendBudget

#: How soon a job that only waits for calls in flight to settle (or for this worker's next share) asks again.
RESERVED_RECHECK_S = 0.25


class SpendGate:
    def __init__(self, budget: SpendBudget, clock: Callable[[], float] = time.time) -> None:
        self.budget = budget
        self._clock = clock
        self._lock = threading.Lock()
        self._own: dict[int, float] = {}  # window start -> settled spend of this worker
        self._others: dict[int, tuple[float, float]] = {}  # window start -> the rest of the fleet's (spent, reserved)
        self._reserved = 0.0  # this worker's calls in flight, at their most expensive outcome
        self._closed_window: int | None = None  # a window in which a job did not fit any more
        self.fleet_size = 1
        # At the last look at the ledger (set_others): its window, this worker's spend then (reservations
        # included), and what the window had left for the whole fleet.
        self._sync_window: int | None = None
        self._own_at_sync = 0.0
        self._left_at_sync = 0.0

    def set_fleet_size(self, live_workers: int) -> None:
        """The live workers that spend the same limit (the presence group's count)."""
        with self._lock:
            self.fleet_size = max(1, live_workers)

    @property
    def limited(self) -> bool:
        return self.budget.limit is not None

    @property
    def reserved(self) -> float:
        """What this worker's calls in flight may cost at most."""
        with self._lock:
            return self._reserved

    def current_window(self) -> int:
        return self.budget.window_start(self._clock())

    def try_reserve(self, estimate: float) -> float:
        """Reserve a call's most expensive outcome: 0 when it fits in what the window has left (then reserved),
        RESERVED_RECHECK_S when it would fit once calls in flight settle, else the seconds until the next window
        (and the gate stays closed until then)."""
        with self._lock:
            now = self._clock()
            window = self.budget.window_start(now)
            limit = self.budget.limit
            if limit is None:
                self._reserved += estimate
                return 0.0
            estimate = min(estimate, limit)
            others_spent, others_reserved = self._others.get(window, (0.0, 0.0))
            left = limit - self._own.get(window, 0.0) - others_spent
            if self._closed_window != window and estimate <= left:
                in_flight = self._reserved + others_reserved
                if in_flight + estimate <= left and self._within_share(window, estimate):
                    self._reserved += estimate
                    return 0.0
                return RESERVED_RECHECK_S
            self._closed_window = window
            return max(0.001, window + self.budget.window_s - now)

    def _within_share(self, window: int, estimate: float) -> bool:
        """Whether this worker may spend `estimate` more before it next reads the ledger: its share (1 / live
        workers) of what the window had left when it last did, or one job."""
        assert self.budget.limit is not None
        synced = self._sync_window == window
        own_at_sync = self._own_at_sync if synced else 0.0
        left_at_sync = self._left_at_sync if synced else self.budget.limit
        since = self._own.get(window, 0.0) + self._reserved - own_at_sync
        return since <= 0 or since + estimate <= left_at_sync / self.fleet_size

    def force_reserve(self, estimate: float) -> None:
        """Reserve without asking: a call of a job already started (a repair) finishes what it began."""
        with self._lock:
            self._reserved += self._capped(estimate)

    def settle(self, estimate: float, cost: float) -> None:
        """A call reserved at `estimate` is over and cost `cost` (0 when refused), counted in the window now."""
        with self._lock:
            left = self._reserved - self._capped(estimate)
            self._reserved = left if left > 1e-9 else 0.0  # float residue of many adds and subtracts is no call
            if cost > 0:
                window = self.current_window()
                self._own[window] = self._own.get(window, 0.0) + cost
                self._forget_before(window)

    def release(self, estimate: float) -> None:
        """A reservation whose call never started."""
        self.settle(estimate, 0.0)

    def _capped(self, estimate: float) -> float:
        return estimate if self.budget.limit is None else min(estimate, self.budget.limit)

    def published(self, window: int) -> tuple[float, float]:
        """This worker's (spend, reservations) in `window`: what it publishes to the ledger."""
        with self._lock:
            current = window == self.budget.window_start(self._clock())
            return self._own.get(window, 0.0), (self._reserved if current else 0.0)

    def own(self, window: int) -> float:
        """This worker's spend in `window`, its reservations included."""
        spent, reserved = self.published(window)
        return spent + reserved

    def set_others(self, window: int, spent: float, reserved: float = 0.0) -> None:
        """What the other workers of the fleet have spent, and reserved for calls in flight, in `window`, as the
        ledger says. Renews this worker's share."""
        with self._lock:
            self._others[window] = (max(0.0, spent), max(0.0, reserved))
            self._forget_before(self.current_window())
            own = self._own.get(window, 0.0) + self._reserved
            self._sync_window, self._own_at_sync = window, own
            self._left_at_sync = (self.budget.limit or 0.0) - own - sum(self._others[window])

    def spent(self, window: int | None = None) -> float:
        """The fleet's settled spend in `window` (default: the current one), as far as this worker knows."""
        with self._lock:
            return self._spent(self.current_window() if window is None else window)

    def _spent(self, window: int) -> float:
        return self._own.get(window, 0.0) + self._others.get(window, (0.0, 0.0))[0]

    def closed(self, window: int) -> bool:
        """Whether this worker found `window` spent (and holds every job until it ends)."""
        with self._lock:
            return self._closed_window == window or (
                self.budget.limit is not None and self._spent(window) >= self.budget.limit)

    def wait_s(self) -> float:
        """0 while the current window's gate is open; else the seconds until the next window starts."""
        if self.budget.limit is None:
            return 0.0
        with self._lock:
            now = self._clock()
            window = self.budget.window_start(now)
            if self._closed_window != window and self._spent(window) < self.budget.limit:
                return 0.0
            return max(0.001, window + self.budget.window_s - now)

    def _forget_before(self, window: int) -> None:
        # The previous window is kept: a call that began in it may still be published to the ledger.
        for table in (self._own, self._others):
            for old in [w for w in table if w < window - self.budget.window_s]:
                del table[old]
