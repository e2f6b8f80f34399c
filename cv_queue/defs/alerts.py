"""The run-failure alert: a worker or replay run that fails (a crash, a killed process, fencing, a replay that
exhausted its retries) is sent to the notifiers (a log line; the webhook when CVQ_ALERTS__WEBHOOK_URL is set), and
so is a failed relayout_worker_fleet (which leaves the fleet stopped) or stop_worker_fleet.

The fleet sensor replaces a failed worker run on its own; the alert says that it had to.
"""

import dagster as dg

from cv_queue.defs import tags
from cv_queue.defs.alerts_resource import AlertsResource
from cv_queue.defs.defaults import DEFAULTS
from cv_queue.defs.dlq import reprocess_dlq
from cv_queue.defs.notify import Alert
from cv_queue.defs.relayout import relayout_worker_fleet
from cv_queue.defs.workers import partition_worker, stop_worker_fleet

MAX_MESSAGE_CHARS = 2000  # a stack trace can be long; the run's page has the whole of it


def run_failure_alert(run: dg.DagsterRun, failure_message: str) -> Alert:
    slot = run.tags.get(tags.WORKER_SLOT)
    where = f" (slot {slot})" if slot else ""
    first_line = failure_message.strip().splitlines()[0] if failure_message.strip() else "no message"
    return Alert(kind="run_failure", severity="ERROR", run_id=run.run_id, job=run.job_name, slot=slot,
                 failure_message=failure_message[:MAX_MESSAGE_CHARS],
                 summary=f"{run.job_name}{where} run {run.run_id} failed: {first_line}")


def failure_cause(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the run failed, in the words of the event that says so.

    The RUN_FAILURE event alone is often generic ("marked as failed from outside the execution context" for a
    killed process); the cause is the step's failure (a dg.Failure's description: fenced, fatal...) or, when the
    process died, the engine event just before the run failure ("terminated by signal 9 (SIGKILL)")."""
    wanted = {dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.ENGINE_EVENT}
    records = instance.get_records_for_run(run_id, of_type=wanted, ascending=False, limit=50).records
    before_failure = False
    nearest_engine_message = None
    for record in records:  # newest first
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            before_failure = True
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            failure = event.step_failure_data
            if failure.user_failure_data is not None and failure.user_failure_data.description:
                return failure.user_failure_data.description.strip()  # a dg.Failure: its description alone
            if failure.error is not None:
                return failure.error.message.strip()
        elif before_failure and nearest_engine_message is None and event.message:
            nearest_engine_message = event.message.strip()
    return nearest_engine_message


@dg.run_failure_sensor(
    name="worker_and_replay_failure_alert",
    # The fleet jobs too: a failed relayout_worker_fleet leaves the fleet stopped, a failed stop leaves it running.
    monitored_jobs=[partition_worker, reprocess_dlq, relayout_worker_fleet, stop_worker_fleet],
    minimum_interval_seconds=DEFAULTS.alerts.sensor_interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends each failed partition_worker, reprocess_dlq, relayout_worker_fleet or stop_worker_fleet run "
                "to the alert notifiers (log, webhook).",
)
def worker_and_replay_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    cause = failure_cause(context.instance, run.run_id)
    generic = context.failure_event.message or ""
    alert = run_failure_alert(run, f"{cause}\n({generic})" if cause else generic)
    context.log.info(alert.summary)
    alerts.notify(alert, context.log)
