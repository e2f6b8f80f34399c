"""Whether the worker fleet should run, kept in the Dagster instance's key-value store.

`stop_worker_fleet` sets it; the fleet sensor then launches nothing and each worker run, which checks it
every few seconds, commits what is complete and ends. `start_worker_fleet` clears it.
"""

import json
from datetime import UTC, datetime

import dagster as dg

FLEET_KEY = "cv-queue/fleet"


def fleet_stopped(instance: dg.DagsterInstance) -> dict | None:
    """The stop record ({"by_run": ..., "at": ...}) while the fleet is stopped, else None."""
    raw = instance.run_storage.get_cursor_values({FLEET_KEY}).get(FLEET_KEY)
    if not raw:
        return None
    record = json.loads(raw)
    return record if record.get("stopped") else None


def set_fleet_stopped(instance: dg.DagsterInstance, stopped: bool, by_run: str) -> None:
    record = {"stopped": stopped, "by_run": by_run, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    instance.run_storage.set_cursor_values({FLEET_KEY: json.dumps(record)})
