"""stop_worker_fleet stops the fleet through the instance's stop flag only: it waits for the worker runs to end and,
when some are still going after its wait, fails naming them without terminating any. (Worker runs that see the flag
and end are exercised with real processes in test_daemon.py and deploy/test_production_instance.py.)"""

import threading
import time

import dagster as dg

from cv_queue.defs import tags
from cv_queue.defs.fleet_state import fleet_stopped
from cv_queue.defs.workers import WORKER_JOB, stop_worker_fleet


def _started_worker_run(instance: dg.DagsterInstance, slot: str) -> dg.DagsterRun:
    """A worker run record as the launcher leaves it once the run's process started (no process behind it)."""
    return instance.add_run(dg.DagsterRun(job_name=WORKER_JOB, status=dg.DagsterRunStatus.STARTED,
                                          tags={tags.WORKER_SLOT: slot, tags.ROLE: tags.ROLE_WORKER}))


def _stop(instance: dg.DagsterInstance, wait_s: float) -> dg.ExecuteInProcessResult:
    return stop_worker_fleet.execute_in_process(
        instance=instance, raise_on_error=False, run_config={"ops": {"stop_fleet": {"config": {"wait_s": wait_s}}}})


def test_runs_still_going_after_the_wait_fail_the_stop_by_name_and_are_not_terminated():
    with dg.instance_for_test() as instance:
        runs = [_started_worker_run(instance, slot) for slot in ("0-1", "2-3")]
        result = _stop(instance, wait_s=1)
        assert not result.success
        [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        message = failure.step_failure_data.error.message
        for run in runs:
            assert run.run_id in message
        assert "not terminated" in message
        assert fleet_stopped(instance) is not None  # the fleet stays stopped
        for run in runs:
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


def test_the_stop_succeeds_once_every_worker_run_ended():
    with dg.instance_for_test() as instance:
        runs = [_started_worker_run(instance, slot) for slot in ("0-1", "2-3")]

        def end_runs_as_workers_do() -> None:  # each sees the flag, commits and reports success
            while fleet_stopped(instance) is None:
                time.sleep(0.1)
            time.sleep(1)
            for run in runs:
                instance.report_dagster_event(dg.DagsterEvent(
                    event_type_value=dg.DagsterEventType.RUN_SUCCESS.value, job_name=WORKER_JOB), run_id=run.run_id)

        workers = threading.Thread(target=end_runs_as_workers_do, daemon=True)
        workers.start()
        result = _stop(instance, wait_s=60)
        workers.join(10)
        assert result.success
        assert result.output_for_node("stop_fleet") == len(runs)
        assert {instance.get_run_by_id(r.run_id).status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
