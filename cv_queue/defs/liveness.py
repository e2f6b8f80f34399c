"""Liveness of worker runs from the queue, not from the run launcher.

Under Dagster's DefaultRunLauncher only the code server that launched a run reports its death. When that server is
gone (`cv-queue dev` or the host was killed, or the code server restarted), a run whose process dies stays STARTED for
ever: the fleet sensor counted it as covering its slot, and the per-slot run limit queued any replacement behind it.

Every worker is a member of the presence group while it runs (kafka/fleet/presence.py), whatever launched it. So the
fleet sensor asks the broker which slots have a live worker, remembers when it last saw each one (in its cursor), and
treats a STARTED run as dead once its slot has had no live worker for `fleet.dead_after_s` (a STARTING one: for
`fleet.start_timeout_s`, since starting may take minutes), counted from the later of the run's last status change and
the slot's last sighting. It then writes the reason into the run's event log and marks the run failed (the failure alert
fires on that), and launches a replacement.

A gap in the sensor's own sightings (the broker was unreachable, the daemon was down) restarts every count: nothing
is declared dead on evidence older than the gap.
"""

import json
import logging
import time
from datetime import UTC

import dagster as dg
from pydantic import BaseModel, ValidationError

from cv_queue.defs import tags

log = logging.getLogger("cv_queue.fleet")

WATCHED = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)


class Sightings(BaseModel):
    """The fleet sensor's cursor: when each slot last had a live worker, when the broker was last asked, and since
    when it has been asked without a gap."""

    checked_at: float | None = None
    watching_since: float | None = None
    last_seen: dict[str, float] = {}

    @classmethod
    def load(cls, cursor: str | None) -> "Sightings":
        if not cursor:
            return cls()
        try:
            return cls.model_validate(json.loads(cursor))
        except (ValueError, ValidationError):  # an older cursor, or a hand-edited one: start counting afresh
            return cls()

    def dump(self) -> str:
        return self.model_dump_json()

    def observe(self, live: set[str], now: float, dead_after_s: float, tick_s: float = 0.0) -> "Sightings":
        """These sightings after the broker named `live` at `now`. After a gap of over half `dead_after_s` (and over
        2.5 sensor ticks of `tick_s`, so a slow sensor interval cannot turn every tick into a gap) since the last
        look, or at the first look, counting starts again from now: silence during a gap is no evidence."""
        gap_s = max(dead_after_s / 2, 2.5 * tick_s)
        gap = self.checked_at is None or self.watching_since is None or now - self.checked_at > gap_s
        seen = {**self.last_seen, **dict.fromkeys(live, now)}
        return Sightings(checked_at=now, watching_since=now if gap else self.watching_since, last_seen=seen)

    def silent_for(self, slot: str, since: float, now: float) -> float:
        """Seconds `slot` has had no live worker, counted from no earlier than `since` (the run's last status
        change) nor than the start of the unbroken watch."""
        floor = self.watching_since if self.watching_since is not None else now
        return now - max(since, floor, self.last_seen.get(slot, float("-inf")))


class DeadRun(BaseModel):
    run_id: str
    slot: str
    silent_s: float


def dead_worker_runs(records: list[dg.RunRecord], sightings: Sightings, live: set[str], now: float,
                     dead_after_s: float, start_timeout_s: float = 0.0) -> list[DeadRun]:
    """The STARTED runs among `records` whose slot has had no live worker for dead_after_s, and the STARTING ones
    silent for the longer of that and start_timeout_s (a run may take minutes to start executing)."""
    dead = []
    for record in records:
        run = record.dagster_run
        slot = run.tags.get(tags.WORKER_SLOT)
        if run.status not in WATCHED or slot is None or slot in live:
            continue
        silent = sightings.silent_for(slot, status_since(record), now)
        limit = dead_after_s if run.status == dg.DagsterRunStatus.STARTED else max(dead_after_s, start_timeout_s)
        if silent >= limit:
            dead.append(DeadRun(run_id=run.run_id, slot=slot, silent_s=silent))
    return dead


def status_since(record: dg.RunRecord) -> float:
    """When the run got its present status: a run launched or started moments ago has had no time to join the
    presence group yet. (SQLite storage keeps naive UTC timestamps.)"""
    if record.dagster_run.status == dg.DagsterRunStatus.STARTED and record.start_time is not None:
        return record.start_time
    updated = record.update_timestamp
    return (updated if updated.tzinfo else updated.replace(tzinfo=UTC)).timestamp()


def close_dead_run(instance: dg.DagsterInstance, dead: DeadRun, dead_after_s: float) -> bool:
    """Mark a dead run failed, the reason first in its event log (the failure alert quotes that engine event).
    False if the run ended meanwhile on its own."""
    run = instance.get_run_by_id(dead.run_id)
    if run is None or run.status not in WATCHED:
        return False
    reason = (f"worker run for slot {dead.slot} declared dead by worker_fleet_sensor: no live worker for the slot in "
              f"the presence group for {dead.silent_s:.0f}s while {run.status.value} (fleet.dead_after_s = "
              f"{dead_after_s:.0f}, fleet.start_timeout_s for a run still starting). Its process is "
              "gone and nothing reported it (the code server that launched it was restarted or killed); a "
              "replacement is launched now.")
    fail_run(instance, run, reason)
    log.warning(reason)
    return True


def fail_run(instance: dg.DagsterInstance, run: dg.DagsterRun, reason: str) -> None:
    """Mark a run whose process is gone failed: the reason first as an engine event, which the failure alert quotes
    (alerts.failure_cause), then the run failure itself."""
    instance.report_engine_event(reason, run)
    instance.report_run_failed(run, reason)


def now_s() -> float:
    return time.time()
