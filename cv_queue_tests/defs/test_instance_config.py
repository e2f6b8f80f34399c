"""Both instance configs (local and production) make the `cv_queue` logger a managed Python logger and bound tick
retention, and Dagster's own schema accepts them. (That the managed logger reaches a run's event log is shown
by the fencing test in test_alerts_daemon.py.)"""

import pytest
from dagster._core.instance.config import dagster_instance_config

from cv_queue.defs import tags
from cv_queue.defs.relayout import relayout_worker_fleet
from cv_queue.defs.workers import start_worker_fleet, stop_worker_fleet
from cv_queue_tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize("folder", [PROJECT_ROOT, PROJECT_ROOT / "deploy"], ids=["local", "production"])
def test_worker_logs_reach_the_event_log_and_ticks_are_bounded(folder):
    config, _ = dagster_instance_config(str(folder), "dagster.yaml")  # raises on anything the schema rejects
    assert config["python_logs"]["managed_python_loggers"] == ["cv_queue"]
    assert "python_log_level" not in config["python_logs"]  # INFO lines of the worker stay out of the event log
    sensor_ticks = config["retention"]["sensor"]["purge_after_days"]
    assert all(days > 0 for days in sensor_ticks.values())
    assert set(sensor_ticks) == {"skipped", "started", "success", "failure"}
    assert config["retention"]["schedule"]["purge_after_days"] > 0


@pytest.mark.parametrize("folder", [PROJECT_ROOT, PROJECT_ROOT / "deploy"], ids=["local", "production"])
def test_fleet_control_jobs_run_one_at_a_time_and_never_queue_behind_workers(folder):
    """Worker runs never end, so no overall run limit (a big fleet would hold every place and stop_worker_fleet
    would wait for ever); instead the three jobs that change the fleet share a tag limited to one run."""
    config, _ = dagster_instance_config(str(folder), "dagster.yaml")
    runs = config["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == -1
    control = [lim for lim in runs["tag_concurrency_limits"]
               if lim["key"] == tags.ROLE and lim.get("value") == tags.ROLE_FLEET_CONTROL]
    assert [lim["limit"] for lim in control] == [1]
    for job in (stop_worker_fleet, start_worker_fleet, relayout_worker_fleet):
        assert job.tags[tags.ROLE] == tags.ROLE_FLEET_CONTROL, job.name
