"""Run retention: the `purge_old_runs` job, scheduled daily, deletes finished runs (and their event logs).

Dagster OSS 1.13's instance config bounds only schedule and sensor ticks (`retention:` in dagster.yaml, set
there); it has no run or event-log retention. Without this job the instance grows for ever: every replay run,
every replaced worker run and every asset materialization keeps its whole event log. Runs still queued or
running are never touched: a long-running worker run's log is bounded instead by logging progress only on
change (and once a minute when idle).
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from cv_queue.defs.defaults import DEFAULTS

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
BATCH = 200
MAX_PER_RUN = 20_000  # a first purge of a big instance spreads over a few days rather than one very long run


class PurgeConfig(dg.Config):
    older_than_days: float = Field(
        DEFAULTS.run_retention.finished_run_days,
        description="Delete runs that finished more than this many days ago (0 = delete nothing).")
    dry_run: bool = Field(False, description="Only count the runs that would be deleted.")


@dg.op
def purge_finished_runs(context: dg.OpExecutionContext, config: PurgeConfig) -> dg.Output[int]:
    if config.older_than_days <= 0:
        context.log.info("run retention is off (older_than_days is 0): nothing deleted")
        return dg.Output(0, metadata={"deleted": 0})
    cutoff = datetime.now(UTC) - timedelta(days=config.older_than_days)
    old = dg.RunsFilter(statuses=FINISHED, updated_before=cutoff)
    instance = context.instance
    if config.dry_run:
        count = instance.get_runs_count(filters=old)
        context.log.info(f"DRY RUN: {count} run(s) finished before {cutoff:%Y-%m-%d %H:%M} UTC would be deleted")
        return dg.Output(count, metadata={"would_delete": count})
    deleted = 0
    while deleted < MAX_PER_RUN:
        records = instance.get_run_records(filters=old, limit=BATCH, order_by="update_timestamp", ascending=True)
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
        deleted += len(records)
        if len(records) < BATCH:
            break
    context.log.info(f"deleted {deleted} run(s) that finished before {cutoff:%Y-%m-%d %H:%M} UTC, with their "
                     "event logs")
    return dg.Output(deleted, metadata={"deleted": deleted, "cutoff": cutoff.isoformat(timespec="seconds")})


@dg.job(executor_def=dg.in_process_executor,
        description="Delete finished runs older than the retention period, with their event logs.")
def purge_old_runs() -> None:
    purge_finished_runs()


purge_old_runs_schedule = dg.ScheduleDefinition(
    name="purge_old_runs_daily", job=purge_old_runs, cron_schedule=DEFAULTS.run_retention.cron,
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Run retention (CVQ_RUN_RETENTION__FINISHED_RUN_DAYS); Dagster OSS has no setting for it.")
