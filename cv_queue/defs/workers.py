"""Worker runs, one per partition pair, launched through the instance's run launcher.

- `partition_worker` runs the broker layer's PartitionWorker for one slot until the run is terminated
  (it then commits what is complete and ends CANCELED) or the fleet is stopped (it ends SUCCESS).
  Slots are dynamic partitions, those of the recorded layout (slots.py), so the launchpad offers a slot picker
  and a backfill launches any set.
- `worker_fleet_sensor` keeps one queued-or-running run per slot, replacing runs that died.
- `stop_worker_fleet` / `start_worker_fleet` stop or resume the whole fleet in one action.
"""

import logging
import os
import queue as queue_lib
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import dagster as dg
from confluent_kafka import KafkaException
from pydantic import Field

from cv_queue.defs import tags
from cv_queue.defs.defaults import DEFAULTS
from cv_queue.defs.fleet_state import fleet_stopped, set_fleet_stopped
from cv_queue.defs.k8s_config import worker_pod_tag
from cv_queue.defs.liveness import WATCHED, Sightings, close_dead_run, dead_worker_runs, now_s
from cv_queue.defs.metrics_port import metrics_endpoint, worker_metrics_port
from cv_queue.defs.resources import KafkaResource, Principal, QueueResource, access_failure
from cv_queue.defs.slots import WORKER_SLOTS, fleet_layout, slot_partition_requests
from cv_queue.defs.topics import skip_until_provisioned, unprovisioned
from cv_queue.kafka.client.auth import KafkaAuthError, KafkaAuthorizationError
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.join import WorkerStartError
from cv_queue.kafka.fleet.layout import adopt_recorded_layout
from cv_queue.kafka.fleet.presence import live_slots
from cv_queue.kafka.metrics.stats import WorkerStats
from cv_queue.kafka.worker.partition_worker import PartitionWorker
from cv_queue.settings import QueueSettings, Slot

WORKER_JOB = "partition_worker"
SLOTS = [slot.name for slot in DEFAULTS.slots()]  # 0-1, 2-3, 4-5, 6-7 by default; until a re-layout (slots.py)
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
FLEET_CHECK_S = 3.0


IDLE_PROGRESS_LOG_S = 60.0


class WorkerRunConfig(dg.Config):
    slot: str = Field("", description="Set for you from the partition (the slot) you pick; leave it empty. A run "
                                      "without a partition is refused: it would escape the one-run-per-slot limit.")
    progress_interval_s: float = Field(10.0, description="How often the worker reports progress; the run logs a "
                                                         "report when it changed, and at most once a minute if not.")
    shutdown_grace_s: float | None = Field(
        None, ge=0, description="On termination, how long running jobs may finish before every finished one is "
        "committed. Unset: the queue's worker.shutdown_grace_ms (CVQ_WORKER__SHUTDOWN_GRACE_MS, default 10 s).")


class ProgressLog:
    """Which progress reports reach the event log: every change, and an unchanged one at most once a minute
    (a worker's event log then grows with its work, not with its uptime)."""

    def __init__(self, idle_every_s: float = IDLE_PROGRESS_LOG_S) -> None:
        self.idle_every_s = idle_every_s
        self._last: str | None = None
        self._at = float("-inf")

    def due(self, summary: str, now: float) -> bool:
        if summary != self._last or now - self._at >= self.idle_every_s:
            self._last, self._at = summary, now
            return True
        return False


def refuse_without_slot(config_slot: str, run_tags: Mapping[str, str]) -> None:
    """A run must be launched for a partition: only then does it carry the slot tag the per-slot run limit in
    dagster.yaml counts. A hand-launched run with only a `slot` in its config would run beside the slot's run."""
    tagged = run_tags.get(tags.WORKER_SLOT)
    if not config_slot or tagged != config_slot:
        raise dg.Failure(description=(
            f"partition_worker runs one slot and must be launched for a partition: pick the slot in the Launchpad's "
            f"partition picker ({', '.join(SLOTS)}), or use a backfill, or let worker_fleet_sensor launch it. This "
            f"run has slot {config_slot or '(none)'!r} in its config and {tagged or 'no'} {tags.WORKER_SLOT} tag, "
            "so it would escape the one-run-per-slot limit."))


def _slot_tags(slot: str) -> dict[str, str]:
    # The pod tag sizes worker runs on Kubernetes (K8sRunLauncher); other launchers ignore it.
    return {tags.WORKER_SLOT: slot, tags.ROLE: tags.ROLE_WORKER, **worker_pod_tag(DEFAULTS.k8s)}


def _slot_run_config(partition_key: str) -> dict:
    return {"ops": {"run_partition_worker": {"config": {"slot": partition_key}}}}


# Dynamic: the slots of the recorded layout, kept by the fleet sensor and relayout_worker_fleet (slots.py).
worker_slot_config = dg.PartitionedConfig(partitions_def=WORKER_SLOTS, run_config_for_partition_key_fn=_slot_run_config,
                                          tags_for_partition_key_fn=_slot_tags)


def _join_worker(context: dg.OpExecutionContext, thread: threading.Thread, stop: threading.Event,
                 progress: "queue_lib.SimpleQueue[WorkerStats]") -> bool:
    """Wait for the worker thread, relaying progress; True if it was stopped because the fleet stopped."""
    next_fleet_check = time.monotonic() + FLEET_CHECK_S
    progress_log = ProgressLog()
    while thread.is_alive():
        thread.join(0.5)
        while True:
            try:
                stats = progress.get_nowait()
            except queue_lib.Empty:
                break
            summary = stats.summary()
            if progress_log.due(summary, time.monotonic()):
                context.log.info(summary)
        if time.monotonic() >= next_fleet_check:
            next_fleet_check = time.monotonic() + FLEET_CHECK_S
            if not stop.is_set() and fleet_stopped(context.instance):
                context.log.info("the fleet was stopped: finishing running jobs and committing")
                stop.set()
                return True
    return False


def with_run_config(settings: QueueSettings, config: WorkerRunConfig) -> QueueSettings:
    """The queue's settings with what the run config sets: its progress interval, and its shutdown grace only when
    given (else CVQ_WORKER__SHUTDOWN_GRACE_MS applies, as every other worker setting does)."""
    overrides: dict = {"progress_interval_s": config.progress_interval_s}
    if config.shutdown_grace_s is not None:
        overrides["shutdown_grace_ms"] = int(config.shutdown_grace_s * 1000)
    return settings.model_copy(update={"worker": settings.worker.model_copy(update=overrides)})


@dg.op(tags={tags.ROLE: tags.ROLE_WORKER})  # deliberately no RetryPolicy: the fleet sensor restarts workers
def run_partition_worker(context: dg.OpExecutionContext, config: WorkerRunConfig, kafka: KafkaResource,
                         queue: QueueResource) -> dg.Output[dict]:
    refuse_without_slot(config.slot, context.run.tags)
    # The recorded layout, not the code location's settings: a re-layout needs no reload (slots.py).
    # Read as the worker principal: a worker run needs no admin rights (its ACLs cover the layout record).
    # The login is checked first, so a refused one fails the run within seconds, naming the cause.
    worker_conn = kafka.check_access(Principal.WORKER)
    settings = adopt_recorded_layout(worker_conn, admin_client(worker_conn), queue.settings(kafka))
    settings = with_run_config(settings, config)
    slot = Slot.parse(config.slot)
    with metrics_endpoint(settings.metrics, worker_metrics_port(settings, slot), context.log,
                          kafka.connection(Principal.WORKER), settings):
        return _run_worker(context, config, kafka, settings, slot)


def _run_worker(context: dg.OpExecutionContext, config: WorkerRunConfig, kafka: KafkaResource,
                settings: QueueSettings, slot: Slot) -> dg.Output[dict]:
    progress: queue_lib.SimpleQueue[WorkerStats] = queue_lib.SimpleQueue()
    worker = PartitionWorker(kafka.connection(Principal.WORKER), settings, slot, on_progress=progress.put)
    stop = threading.Event()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["stats"] = worker.run(stop)
        except BaseException as exc:  # re-raised in the op's thread
            outcome["error"] = exc

    context.log.info(f"worker for slot {slot.name} (pid {os.getpid()}) on {settings.topic_names.main} "
                     f"partitions {list(slot.partitions)}")
    thread = threading.Thread(target=target, name=f"cvq-worker-{slot.name}", daemon=True)
    thread.start()
    try:
        fleet_stop = _join_worker(context, thread, stop, progress)
        thread.join()
    except dg.DagsterExecutionInterruptedError:
        # Termination (UI, CLI, SIGTERM from a container stop): commit what completed, then end CANCELED.
        context.log.warning(f"slot {slot.name}: termination requested; committing completed work and closing")
        stop.set()
        thread.join(settings.worker.shutdown_grace_ms / 1000 + 30)
        raise
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, WorkerStartError):
            raise dg.Failure(description=str(error)) from error
        if isinstance(error, KafkaAuthError | KafkaAuthorizationError):  # named, not retried: credentials or ACLs
            raise access_failure(error, Principal.WORKER) from error
        raise error
    stats: WorkerStats = outcome["stats"]
    if stats.stop_reason == "fenced":
        raise dg.Failure(description=f"slot {slot.name}: fenced by another worker for the same slot")
    if stats.stop_reason == "handlers_exhausted":
        raise dg.Failure(description=f"slot {slot.name}: too many handlers stuck in timed-out jobs (threads, or "
                                     "async jobs that ignored their cancellation; completed work was committed); "
                                     "the fleet sensor starts a fresh process")
    if stats.stop_reason == "fatal":
        raise dg.Failure(description=f"slot {slot.name}: the worker's producer hit a fatal error (see the logs); "
                                     "the fleet sensor starts a replacement")
    # a revoked ACL, a topic gone or recreated (kafka/client/failures.py)
    if stats.stop_reason in ("denied", "topic_state"):
        raise dg.Failure(description=f"slot {slot.name}: {stats.stop_error}",
                         metadata={"stop_reason": stats.stop_reason})
    context.log.info(f"stopped ({'fleet stop' if fleet_stop else stats.stop_reason}): {stats.summary()}")
    return dg.Output({"succeeded": stats.succeeded, "retried": stats.retried,
                      "dead_lettered": stats.dead_lettered},
                     metadata={"succeeded": stats.succeeded, "retried": stats.retried,
                               "dead_lettered": stats.dead_lettered, "invalid": stats.invalid,
                               "commits": stats.commits})


@dg.job(name=WORKER_JOB, config=worker_slot_config, tags={tags.ROLE: tags.ROLE_WORKER},
        executor_def=dg.in_process_executor,  # one process per run: the run *is* the worker
        description="A long-running worker for one partition pair; runs until terminated.")
def partition_worker() -> None:
    run_partition_worker()


def active_worker_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=WORKER_JOB, statuses=ACTIVE)))


def restart_pause_s(failures_in_a_row: int, base_s: float, cap_s: float) -> float:
    """How long a slot whose last runs all failed waits before the next: base_s after one failure, doubling with each
    further one up to cap_s. A cause a restart cannot cure (a recreated topic, a revoked ACL, a layout mismatch) then
    costs a run every cap_s rather than every few seconds, and the slot heals by itself once the cause is fixed."""
    if failures_in_a_row <= 0:
        return 0.0
    return min(cap_s, base_s * 2.0 ** min(failures_in_a_row - 1, 30))


def _restart_pause_left(instance: dg.DagsterInstance, slot: str) -> float:
    """Seconds the slot still waits after its failed runs (0 when its last run did not fail)."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=WORKER_JOB, tags={tags.WORKER_SLOT: slot}), limit=12)
    failures = 0
    for run in runs:  # newest first
        if run.status != dg.DagsterRunStatus.FAILURE:
            break
        failures += 1
    if not failures:
        return 0.0
    record = instance.get_run_record_by_id(runs[0].run_id)
    ended = record.end_time if record else None
    if ended is None:
        return 0.0
    pause = restart_pause_s(failures, FLEET.restart_backoff_s, FLEET.max_restart_backoff_s)
    return max(0.0, ended + pause - datetime.now(UTC).timestamp())


FLEET = DEFAULTS.fleet  # read at definition load, like the sensor's interval must be


def _watch_liveness(context: dg.SensorEvaluationContext, kafka: KafkaResource,
                    settings: QueueSettings) -> tuple[Sightings, list[str]]:
    """Update the sightings of live workers, and fail the worker runs that are dead (liveness.py); returns the new
    sightings and the slots whose run was just failed. When the broker cannot say who is alive, nothing is judged."""
    sightings = Sightings.load(context.cursor)
    try:
        live = live_slots(kafka.admin(), settings, timeout_s=10)
    except KafkaException as exc:
        context.log.warning(f"could not read the presence group, so no worker run is judged dead this tick: {exc}")
        return sightings, []
    now = now_s()
    sightings = sightings.observe(live, now, FLEET.dead_after_s, FLEET.sensor_interval_s)
    records = list(context.instance.get_run_records(filters=dg.RunsFilter(job_name=WORKER_JOB, statuses=list(WATCHED))))
    reaped = [dead.slot for dead in dead_worker_runs(records, sightings, live, now, FLEET.dead_after_s,
                                                     FLEET.start_timeout_s)
              if close_dead_run(context.instance, dead, FLEET.dead_after_s)]
    return sightings, reaped


@dg.sensor(job=partition_worker, minimum_interval_seconds=FLEET.sensor_interval_s,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Keeps one worker run per slot: launches missing slots, replaces runs that died, and fails "
                       "runs whose slot has had no live worker for fleet.dead_after_s (liveness.py).")
def worker_fleet_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource,
                        queue: QueueResource) -> dg.SensorResult:
    stopped = fleet_stopped(context.instance)
    if missing := unprovisioned(kafka.admin(), queue.settings(kafka)):
        return skip_until_provisioned(missing)
    layout = fleet_layout(kafka, queue.settings(kafka))
    # Judged even while the fleet is stopped: a dead run would keep stop_worker_fleet waiting for it.
    sightings, reaped = _watch_liveness(context, kafka, layout.apply(queue.settings(kafka)))
    if stopped:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"the fleet was stopped by run {stopped['by_run']} at {stopped['at']}; launch start_worker_fleet "
            "to resume"), cursor=sightings.dump())
    slots = [slot.name for slot in layout.slots()]
    slot_requests = slot_partition_requests(context.instance, slots)
    covered = {run.tags.get(tags.WORKER_SLOT) for run in active_worker_runs(context.instance)}
    missing = [slot for slot in slots if slot not in covered]
    # A run failed for being dead is replaced at once: it was silent for dead_after_s already, no crash loop.
    pauses = {slot: _restart_pause_left(context.instance, slot) for slot in missing if slot not in reaped}
    waiting = {slot: left for slot, left in pauses.items() if left > 0}
    launch = [slot for slot in missing if slot not in waiting]
    if waiting:
        context.log.info("slots whose last runs failed, waiting before a restart: "
                         + ", ".join(f"{slot} ({left:.0f}s more)" for slot, left in waiting.items()))
    if not launch:
        reason = f"all {len(slots)} slots have a worker run" if not missing else \
            f"slots {sorted(waiting)} failed; restarting them after a pause that doubles with each failure in a row " \
            f"(up to {FLEET.max_restart_backoff_s:.0f}s): " + ", ".join(f"{s} in {w:.0f}s" for s, w in waiting.items())
        return dg.SensorResult(skip_reason=dg.SkipReason(reason), dynamic_partitions_requests=slot_requests,
                               cursor=sightings.dump())
    context.log.info(f"launching worker runs for slots {launch}"
                     + (f" (replacing dead runs of {reaped})" if reaped else ""))
    return dg.SensorResult(run_requests=[dg.RunRequest(partition_key=slot, tags=_slot_tags(slot)) for slot in launch],
                           dynamic_partitions_requests=slot_requests, cursor=sightings.dump())


def wait_for_fleet_to_end(instance: dg.DagsterInstance, timeout_s: float, log: logging.Logger | dg.DagsterLogManager,
                          poll_s: float = 2.0) -> list[dg.DagsterRun]:
    """Wait until no worker run is active: each has seen the stop flag, committed what completed and ended.

    Call it with the fleet stopped (set_fleet_stopped), or runs the fleet sensor launches meanwhile keep it waiting.
    Returns the worker runs still active after timeout_s (empty when the whole fleet ended). It terminates nothing:
    only the flag stops workers, so no run ever terminates another (a run container cannot reach the launcher).
    """
    deadline = time.monotonic() + timeout_s
    remaining = active_worker_runs(instance)
    log.info(f"waiting up to {timeout_s:.0f}s for {len(remaining)} worker run(s) to commit and end")
    while remaining and time.monotonic() < deadline:
        time.sleep(poll_s)
        remaining = active_worker_runs(instance)
    return remaining


def describe_runs(runs: list[dg.DagsterRun]) -> str:
    """Run ids with their slot and status, for messages that ask an operator to look at them."""
    return ", ".join(f"{run.run_id} (slot {run.tags.get(tags.WORKER_SLOT)}, {run.status.value})" for run in runs)


class StopFleetConfig(dg.Config):
    wait_s: float = Field(120.0, description="How long to wait for every worker run to commit and end. Runs still "
                                             "going then fail this run, which names them; nothing is terminated.")


@dg.op
def stop_fleet(context: dg.OpExecutionContext, config: StopFleetConfig) -> dg.Output[int]:
    instance = context.instance
    set_fleet_stopped(instance, True, context.run_id)
    runs = active_worker_runs(instance)
    context.log.info(f"fleet stopped: the fleet sensor launches nothing and {len(runs)} worker run(s) end on the "
                     "stop flag")
    still_running = wait_for_fleet_to_end(instance, config.wait_s, context.log)
    if still_running:
        raise dg.Failure(description=(
            f"{len(still_running)} worker run(s) still active {config.wait_s:.0f}s after the fleet was stopped: "
            f"{describe_runs(still_running)}. The fleet stays stopped and they were not terminated: they end when "
            "they see the stop flag (a stuck one can be terminated by hand in the UI)."))
    ended = [r for r in (instance.get_run_by_id(run.run_id) for run in runs) if r is not None]
    unclean = [r for r in ended if r.status != dg.DagsterRunStatus.SUCCESS]
    if unclean:
        context.log.warning(f"worker run(s) that ended other than SUCCESS: {describe_runs(unclean)}")
    context.log.info(f"every worker run ended ({len(ended) - len(unclean)} of {len(ended)} SUCCESS)")
    return dg.Output(len(runs), metadata={"worker_runs": len(runs), "ended_success": len(ended) - len(unclean)})


@dg.job(executor_def=dg.in_process_executor, tags={tags.ROLE: tags.ROLE_FLEET_CONTROL},
        description="Stop the worker fleet: the fleet sensor launches nothing and every worker run ends.")
def stop_worker_fleet() -> None:
    stop_fleet()


@dg.op
def start_fleet(context: dg.OpExecutionContext) -> None:
    set_fleet_stopped(context.instance, False, context.run_id)
    context.log.info("fleet started: the fleet sensor launches the missing slots on its next tick")


@dg.job(executor_def=dg.in_process_executor, tags={tags.ROLE: tags.ROLE_FLEET_CONTROL},
        description="Resume the worker fleet after stop_worker_fleet.")
def start_worker_fleet() -> None:
    start_fleet()
