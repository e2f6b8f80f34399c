"""With a real dagster-daemon and one worker slot: a SIGKILLed worker run is posted to the alert webhook by the
run-failure sensor, and a worker run fenced by a `cv-queue worker` for its slot shows the broker layer's fencing
error in its own event log (the `cv_queue` logger is a managed Python logger in dagster.yaml)."""

import logging
import os
import signal
import subprocess

import dagster as dg
import pytest

from cv_queue.defs.alerts import failure_cause
from cv_queue.defs.workers import WORKER_JOB, active_worker_runs
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue_tests.daemon import running_daemon
from cv_queue_tests.defs.test_daemon import WORKER_ENV, _worker_pid
from cv_queue_tests.defs.webhook import webhook_receiver
from cv_queue_tests.kafka.procs import spawn_worker, started
from cv_queue_tests.support import tuned, wait_for

pytestmark = pytest.mark.daemon

ALERT_SENSOR = "worker_and_replay_failure_alert"
ONE_SLOT_ENV = {
    **WORKER_ENV,
    "CVQ_TOPICS__PARTITIONS": "2",  # one slot, 0-1: one worker run is enough here
    "CVQ_FLEET__RESTART_BACKOFF_S": "3600",  # a failed run stays failed: no replacement to wait for or stop
    "CVQ_ALERTS__SENSOR_INTERVAL_S": "2",
}


def _one_slot(conn, settings):
    settings = tuned(settings, topics={"partitions": 2})
    provision(admin_client(conn), topic_specs(settings))
    return settings


def _started_run(daemon) -> dg.DagsterRun:
    wait_for(lambda: any(r.status == dg.DagsterRunStatus.STARTED for r in active_worker_runs(daemon.instance)), 180,
             "the fleet sensor to start the worker run for slot 0-1")
    [run] = active_worker_runs(daemon.instance)
    assert run.job_name == WORKER_JOB
    return run


def _sensor_ticked(daemon, name: str) -> bool:
    for state in daemon.instance.all_instigator_state():
        if state.name == name and daemon.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1):
            return True
    return False


def _messages(daemon, run_id: str) -> list[tuple[int, str]]:
    return [(entry.level, entry.user_message or "") for entry in daemon.instance.all_logs(run_id)]


def test_a_killed_worker_run_is_posted_to_the_webhook(conn, settings, tmp_path):
    _one_slot(conn, settings)
    with webhook_receiver() as hook, running_daemon(tmp_path, settings.namespace,
                                                    {**ONE_SLOT_ENV, "CVQ_ALERTS__WEBHOOK_URL": hook.url}) as daemon:
        run = _started_run(daemon)
        # A run-failure sensor reports failures after its first tick: make sure it has had one.
        wait_for(lambda: _sensor_ticked(daemon, ALERT_SENSOR), 60, f"a first tick of {ALERT_SENSOR}")
        wait_for(lambda: _worker_pid(daemon, run.run_id) is not None, 60, "the worker run to log its pid")
        os.kill(_worker_pid(daemon, run.run_id), signal.SIGKILL)

        post = hook.next(120, "the run-failure alert")
        alert = post["json"]
        assert post["content_type"] == "application/json"
        assert (alert["kind"], alert["run_id"], alert["job"], alert["slot"]) == (
            "run_failure", run.run_id, WORKER_JOB, "0-1")
        assert "SIGKILL" in alert["failure_message"] or "signal 9" in alert["failure_message"], alert
        assert daemon.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert hook.received() == []  # one failure, one alert


def test_a_fenced_worker_run_shows_the_fencing_in_its_event_log(conn, settings, tmp_path):
    settings = _one_slot(conn, settings)
    with running_daemon(tmp_path, settings.namespace, ONE_SLOT_ENV) as daemon:
        run = _started_run(daemon)
        # The first progress report says the run's worker is up (its transactional producer initialised), so the
        # worker started next is the newer one and fences it.
        wait_for(lambda: any(m.startswith("slot 0-1: consumed") for _, m in _messages(daemon, run.run_id)), 120,
                 "the worker run's first progress report")
        log = tmp_path / "cli-worker.log"
        intruder = spawn_worker(settings, "0-1", log, extra_env={"CVQ_TOPICS__PARTITIONS": "2"})
        try:
            wait_for(lambda: started(log), 120, "the cv-queue worker for slot 0-1 to start")
            JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(20, seed=5, prefix="fence"))
            ended = daemon.wait_run(run.run_id, {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS}, 120)
            assert ended.status == dg.DagsterRunStatus.FAILURE
        finally:
            intruder.send_signal(signal.SIGTERM)
            try:
                intruder.wait(60)
            except subprocess.TimeoutExpired:
                intruder.kill()
                intruder.wait(10)
        messages = _messages(daemon, run.run_id)
        fenced = [(level, m) for level, m in messages if "was fenced" in m]
        assert fenced, "no fencing message in the run's event log:\n" + "\n".join(m for _, m in messages[-30:])
        assert all(level == logging.ERROR for level, _ in fenced)
        assert "another worker now owns slot 0-1" in fenced[0][1]
        assert failure_cause(daemon.instance, run.run_id) == "slot 0-1: fenced by another worker for the same slot"
