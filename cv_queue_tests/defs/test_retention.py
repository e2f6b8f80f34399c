"""purge_old_runs deletes finished runs older than the retention period, with their event logs, and leaves
newer runs and runs still queued or running alone."""

import time

import dagster as dg

from cv_queue.defs.retention import purge_old_runs, purge_old_runs_schedule
from cv_queue.defs.workers import start_worker_fleet
from cv_queue.settings import QueueSettings


def _purge(instance, **config) -> dg.ExecuteInProcessResult:
    return purge_old_runs.execute_in_process(run_config={"ops": {"purge_finished_runs": {"config": config}}},
                                             instance=instance)


def test_purge_deletes_old_finished_runs_and_their_events_only(instance):
    finished = [start_worker_fleet.execute_in_process(instance=instance).run_id for _ in range(3)]
    running = instance.create_run_for_job(start_worker_fleet, status=dg.DagsterRunStatus.STARTED).run_id
    assert all(instance.all_logs(run_id) for run_id in finished)
    time.sleep(2)

    one_second = 1 / 86400
    dry = _purge(instance, older_than_days=one_second, dry_run=True)
    assert dry.output_for_node("purge_finished_runs") == 3
    assert all(instance.get_run_by_id(run_id) for run_id in finished)
    time.sleep(2)

    purged = _purge(instance, older_than_days=one_second)
    assert purged.output_for_node("purge_finished_runs") == 4  # the three, and the dry run
    for run_id in finished:
        assert instance.get_run_by_id(run_id) is None
        assert instance.all_logs(run_id) == []
    assert instance.get_run_by_id(running).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(purged.run_id) is not None  # a run never deletes itself

    kept = _purge(instance, older_than_days=1)  # nothing left is a day old
    assert kept.output_for_node("purge_finished_runs") == 0
    off = _purge(instance, older_than_days=0)
    assert off.output_for_node("purge_finished_runs") == 0
    assert instance.get_run_by_id(purged.run_id) is not None


def test_the_schedule_follows_the_retention_settings():
    settings = QueueSettings()
    assert purge_old_runs_schedule.cron_schedule == settings.run_retention.cron
    assert purge_old_runs_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
