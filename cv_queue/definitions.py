"""The one Dagster entry point: `dagster dev -w workspace.yaml`, the daemon and `dagster job launch` load `defs`."""

import dagster as dg

from cv_queue.defs.alerts import worker_and_replay_failure_alert
from cv_queue.defs.checks import queue_depth_sensor, queue_health
from cv_queue.defs.dlq import dlq_sensor, reprocess_dlq
from cv_queue.defs.relayout import relayout_worker_fleet
from cv_queue.defs.resources import default_resources
from cv_queue.defs.retention import purge_old_runs, purge_old_runs_schedule
from cv_queue.defs.topics import topic_assets, topic_checks
from cv_queue.defs.workers import partition_worker, start_worker_fleet, stop_worker_fleet, worker_fleet_sensor

defs = dg.Definitions(
    assets=topic_assets,
    asset_checks=[*topic_checks, queue_health],
    jobs=[partition_worker, reprocess_dlq, stop_worker_fleet, start_worker_fleet, purge_old_runs,
          relayout_worker_fleet],
    schedules=[purge_old_runs_schedule],
    sensors=[worker_fleet_sensor, dlq_sensor, queue_depth_sensor, worker_and_replay_failure_alert],
    resources=default_resources(),
    # Every job here runs one op or a few light ones (the topic assets and their checks are admin calls): steps run
    # in the run's own process. The default multiprocess executor would start a Python process per topic asset,
    # importing Dagster each time, to provision seven topics.
    executor=dg.in_process_executor,
)
