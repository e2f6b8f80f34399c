"""The production Dagster instance (deploy/dagster.yaml) run for real, without Docker: Postgres storage on a real
PostgreSQL server, a gRPC code server, dagster-webserver and dagster-daemon as separate processes, and the run launcher
swapped by its one setting (CVQ_RUN_LAUNCHER=default: each run is a process of the code server).

One test walks the operator's path and asserts each step: the topic assets materialized through the webserver, the
fleet started by its sensor, jobs processed exactly once, a DLQ replay triggered by its sensor, stop_worker_fleet and
start_worker_fleet, a SIGKILLed worker run replaced, and a code-server restart the fleet survives (it ends through a
stop launched after the restart), and then one of its runs SIGKILLed, which nothing reports: the fleet sensor finds
its slot has no live worker, fails the run and replaces it."""

import os
import signal
import time
from collections.abc import Callable

import dagster as dg
import pytest
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.scheduler.instigation import TickStatus
from dagster_graphql import DagsterGraphQLClient
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from cv_queue.defs.dlq import REPLAY_JOB
from cv_queue.defs.topics import asset_key, unprovisioned
from cv_queue.defs.workers import active_worker_runs
from cv_queue.deploy.run_launcher import SelectedRunLauncher
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import TopicRole
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.settings import QueueSettings
from cv_queue_tests.defs.test_daemon import WORKER_ENV, _exactly_once, _started_by_slot, _worker_pid
from cv_queue_tests.deploy.dagster_procs import LOCATION, ProductionDagster, production_dagster
from cv_queue_tests.support import read_topic, tuned, wait_for

pytestmark = pytest.mark.daemon

FLEET_SENSOR = "worker_fleet_sensor"
SENSOR_INTERVAL_S = 2
# Two slots (0-1, 2-3) rather than the default four: every fleet step still covers each slot, and the run processes
# started (three fleets) cost half as much on 2 cores. The four-slot fleet runs in cv_queue_tests/defs/test_daemon.py.
PARTITIONS = 4
SLOTS = [slot.name for slot in QueueSettings(topics={"partitions": PARTITIONS}).slots()]
ENV = {
    **WORKER_ENV,
    "CVQ_TOPICS__PARTITIONS": str(PARTITIONS),
    # Sensors tick often, so each step waits seconds rather than the production intervals.
    "CVQ_FLEET__SENSOR_INTERVAL_S": str(SENSOR_INTERVAL_S),
    "CVQ_FLEET__RESTART_BACKOFF_S": "0",
    # A run whose slot has no live worker is dead after 20 s rather than 60: step 6b's slot serves again well within
    # its 90 s (the presence session takes 10 s to lapse, a replacement run ~20 s to start on 2 shared cores).
    "CVQ_FLEET__DEAD_AFTER_S": "20",
    "CVQ_REPLAY__SENSOR_INTERVAL_S": str(SENSOR_INTERVAL_S),
    "CVQ_REPLAY__COOLDOWN_S": "1",
    # A failing job reaches the DLQ within a second: two quick tries, one hop through the retry topic.
    "CVQ_RETRY__INPROCESS_TRIES": "2",
    "CVQ_RETRY__INPROCESS_INITIAL_MS": "20",
    "CVQ_RETRY__BASE_DELAY_MS": "100",
    "CVQ_RETRY__MAX_ATTEMPTS": "2",
}
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
RUN_TIMEOUT_S = 180.0  # a run is a fresh Python process importing Dagster on 2 shared cores
ORPHAN_RECOVERY_S = 90.0  # what the issue asks of a slot whose run died unreported


def _launch(graphql: DagsterGraphQLClient, dagster: ProductionDagster, job: str, **kwargs: object) -> dg.DagsterRun:
    """Launch through the webserver's GraphQL API, as the UI does, and wait until the run finished successfully."""
    run_id = graphql.submit_job_execution(job, repository_location_name=LOCATION, **kwargs)
    run = dagster.daemon.wait_run(run_id, FINISHED, RUN_TIMEOUT_S)
    assert run.status == dg.DagsterRunStatus.SUCCESS, f"{job} ended {run.status}:\n" + _messages(dagster, run_id)
    return run


def _messages(dagster: ProductionDagster, run_id: str) -> str:
    """The run's event log as text: user messages, and the messages of events reported from outside the run (an
    engine event or a run failure reported by the instance carries its text on the event, not as a user message)."""
    return "\n".join(e.user_message or (e.dagster_event.message if e.dagster_event else "") or ""
                     for e in dagster.instance.all_logs(run_id))[-3000:]


def _full_fleet(dagster: ProductionDagster, but_not: set[str] = frozenset()) -> Callable[[], bool]:
    """True once every slot has a STARTED worker run, none of them one of `but_not`."""
    def started() -> bool:
        runs = _started_by_slot(dagster.daemon)
        return sorted(runs) == SLOTS and not {r.run_id for r in runs.values()} & but_not
    return started


def _fleet_sensor_ticks_after(dagster: ProductionDagster, after: float) -> list:
    """The fleet sensor's finished ticks since `after` (a tick being evaluated is STARTED)."""
    instance = dagster.instance
    [state] = [s for s in instance.all_instigator_state() if s.name == FLEET_SENSOR]
    return [t for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)
            if t.timestamp > after and t.status != TickStatus.STARTED]


def _assert_launched_by_the_fleet_sensor(runs: dict[str, dg.DagsterRun]) -> None:
    for slot, run in runs.items():
        assert run.tags.get("dagster/sensor_name") == FLEET_SENSOR, run.tags
        assert run.tags.get("dagster/partition") == slot


def test_production_instance_with_three_processes(conn, settings, postgres, tmp_path, monkeypatch):
    # This process loads the same instance (to watch runs), so it resolves the same variables.
    for key, value in {**postgres.dagster_env(), "CVQ_RUN_LAUNCHER": "default"}.items():
        monkeypatch.setenv(key, value)
    settings = tuned(settings, topics={"partitions": PARTITIONS})
    producer = JobProducer(conn, settings.topic_names.main)
    with production_dagster(tmp_path, postgres, {**ENV, "CVQ_NAMESPACE": settings.namespace}) as dagster:
        instance, daemon = dagster.instance, dagster.daemon
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_launcher, SelectedRunLauncher)
        assert isinstance(instance.run_launcher.selected, dg.DefaultRunLauncher)
        graphql = DagsterGraphQLClient("127.0.0.1", port_number=dagster.web_port)

        # 1. The topic assets, materialized through the webserver: the topics exist only after that run.
        assert unprovisioned(admin_client(conn), settings) == settings.topic_names.all()
        keys = [asset_key(role) for role in TopicRole]
        # In one process: the definitions' executor (ten step processes would only add start-up time).
        assets_run = _launch(graphql, dagster, IMPLICIT_ASSET_JOB_NAME, asset_selection=keys)
        for key in keys:
            event = instance.get_latest_materialization_event(key)
            assert event is not None and event.run_id == assets_run.run_id, key
        assert unprovisioned(admin_client(conn), settings) == []

        # 2. The fleet sensor starts one worker run per slot, each a process of the code server.
        wait_for(_full_fleet(dagster), RUN_TIMEOUT_S, "the fleet sensor to start a worker run for every slot")
        first_fleet = _started_by_slot(daemon)
        _assert_launched_by_the_fleet_sensor(first_fleet)
        assert len(active_worker_runs(instance)) == len(SLOTS)  # never two runs for one slot

        # 3. Jobs processed exactly once; those that fail until replayed reach the DLQ, and the DLQ sensor's
        # replay run brings them back to be processed once.
        plain = list(sample_jobs(200, seed=41, prefix="prod"))
        until_replay = list(sample_jobs(4, seed=42, prefix="prod-replay",
                                        labels_for={i: {"simulate": "transient-until-replay"} for i in range(4)}))
        producer.enqueue_batch(plain + until_replay)
        enqueued = plain + until_replay
        _exactly_once(conn, settings, enqueued, timeout_s=RUN_TIMEOUT_S)
        letters = read_topic(conn, settings.topic_names.dlq, expect=len(until_replay))
        assert sorted(m.key() for m in letters) == sorted(j.key for j in until_replay)
        # Letters reach the DLQ at different moments, so the sensor may ask for a second batch, which waits for the
        # first (one replay at a time) and then finds its letters already moved: wait until every replay ended.
        finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
        snapshot: list[dg.DagsterRun] = []

        def replays_ended() -> bool:  # judged on one read: a later tick may request one more, which finds nothing
            snapshot[:] = instance.get_runs(filters=dg.RunsFilter(job_name=REPLAY_JOB))
            return bool(snapshot) and all(r.status in finished for r in snapshot)

        wait_for(replays_ended, RUN_TIMEOUT_S, "every replay run to end")
        replays = list(snapshot)
        assert {r.tags.get("cv-queue/trigger") for r in replays} == {"dlq_sensor"}
        assert {r.status for r in replays} == {dg.DagsterRunStatus.SUCCESS}

        # 4. A worker run's process SIGKILLed: marked failed, replaced by the fleet sensor, no job lost or doubled.
        victim = first_fleet["2-3"]
        pid = _worker_pid(daemon, victim.run_id)
        assert pid is not None, "the worker run logs its pid"
        during_kill = list(sample_jobs(150, seed=43, prefix="prod-kill"))
        producer.enqueue_batch(during_kill)
        enqueued += during_kill
        os.kill(pid, signal.SIGKILL)
        assert daemon.wait_run(victim.run_id, FINISHED, 120).status == dg.DagsterRunStatus.FAILURE
        wait_for(_full_fleet(dagster, but_not={victim.run_id}), RUN_TIMEOUT_S, "a replacement run for slot 2-3")
        _assert_launched_by_the_fleet_sensor(_started_by_slot(daemon))
        _exactly_once(conn, settings, enqueued, timeout_s=RUN_TIMEOUT_S)

        # 5. stop_worker_fleet: every worker run commits and ends SUCCESS through the stop flag, and the fleet sensor
        # launches nothing; start_worker_fleet brings a new fleet.
        before_stop = {r.run_id for r in active_worker_runs(instance)}
        stop = _launch(graphql, dagster, "stop_worker_fleet",
                       run_config={"ops": {"stop_fleet": {"config": {"wait_s": 90}}}})
        assert not active_worker_runs(instance)
        ended = [instance.get_run_by_id(run_id) for run_id in before_stop]
        assert {r.status for r in ended} == {dg.DagsterRunStatus.SUCCESS}  # committed and ended, not terminated
        stopped_at = instance.get_run_record_by_id(stop.run_id).end_time
        wait_for(lambda: len(_fleet_sensor_ticks_after(dagster, stopped_at)) >= 2, 60, "two fleet sensor ticks")
        for tick in _fleet_sensor_ticks_after(dagster, stopped_at):
            assert tick.status == TickStatus.SKIPPED and "the fleet was stopped" in tick.skip_reason
        assert not active_worker_runs(instance)
        _launch(graphql, dagster, "start_worker_fleet")
        wait_for(_full_fleet(dagster), RUN_TIMEOUT_S, "a new worker run for every slot after start_worker_fleet")
        fleet = _started_by_slot(daemon)
        _assert_launched_by_the_fleet_sensor(fleet)
        assert not {r.run_id for r in fleet.values()} & before_stop

        # 6. The code server killed and restarted on its port: the worker runs keep serving, the daemon reloads the
        # new server (its fleet sensor ticks again) and new jobs are processed exactly once.
        dagster.kill_code_server()
        after_jobs = list(sample_jobs(150, seed=44, prefix="prod-restart"))
        producer.enqueue_batch(after_jobs)  # while no code server runs: the worker runs do not need it
        enqueued += after_jobs
        _exactly_once(conn, settings, enqueued, timeout_s=RUN_TIMEOUT_S)
        restarted_at = time.time()
        dagster.start_code_server()
        wait_for(lambda: any(t.status == TickStatus.SKIPPED for t in _fleet_sensor_ticks_after(dagster,
                                                                                                   restarted_at)),
                 120, "a fleet sensor tick evaluated by the restarted code server")
        assert {r.run_id for r in _started_by_slot(daemon).values()} == {r.run_id for r in fleet.values()}
        assert len(active_worker_runs(instance)) == len(SLOTS)
        last_jobs = list(sample_jobs(100, seed=45, prefix="prod-after-restart"))
        producer.enqueue_batch(last_jobs)
        enqueued += last_jobs
        _exactly_once(conn, settings, enqueued, timeout_s=RUN_TIMEOUT_S)

        # 6b. Then a worker run of the killed code server dies. Nothing reports that (only the code server that
        # launched a run watches its process), so it would stay STARTED for ever and its slot would get no worker;
        # but its slot has no live worker in the presence group any more, so the fleet sensor fails it, saying why,
        # and launches a replacement: the slot serves again within 90 s, nothing lost or doubled.
        orphan = fleet["0-1"]
        orphan_pid = _worker_pid(daemon, orphan.run_id)
        assert orphan_pid is not None
        os.kill(orphan_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        orphan_jobs = list(sample_jobs(100, seed=46, prefix="prod-orphaned"))
        producer.enqueue_batch(orphan_jobs)
        enqueued += orphan_jobs
        _exactly_once(conn, settings, enqueued, timeout_s=ORPHAN_RECOVERY_S)
        print(f"slot 0-1 served again {time.monotonic() - killed_at:.0f}s after its orphaned run was SIGKILLed")
        assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
        assert "declared dead by worker_fleet_sensor" in _messages(dagster, orphan.run_id)
        fleet = _started_by_slot(daemon)
        assert orphan.run_id not in {r.run_id for r in fleet.values()}
        _assert_launched_by_the_fleet_sensor(fleet)

        # 7. Runs launch through the webserver and the restarted code server: a stop ends the surviving fleet.
        _launch(graphql, dagster, "stop_worker_fleet", run_config={"ops": {"stop_fleet": {"config": {"wait_s": 90}}}})
        assert {instance.get_run_by_id(r.run_id).status for r in fleet.values()} == {dg.DagsterRunStatus.SUCCESS}
