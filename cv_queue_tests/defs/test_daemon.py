"""With a real dagster-daemon: the fleet sensor launches worker runs through the run launcher, a killed run
is replaced without losing jobs, termination ends runs CANCELED, `dagster job launch reprocess_dlq` works,
and stop_worker_fleet stops everything."""

import json
import os
import re
import signal
import time
from collections import Counter

import dagster as dg
import pytest
import yaml
from confluent_kafka import Producer

from cv_queue.defs import tags
from cv_queue.defs.workers import SLOTS, WORKER_JOB, active_worker_runs
from cv_queue.errors import ErrorCategory, PermanentJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import committed_offsets
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.wire.envelope import now_ms
from cv_queue_tests.daemon import running_daemon
from cv_queue_tests.kafka.test_replay import _plant_letter
from cv_queue_tests.support import read_topic, wait_for

pytestmark = pytest.mark.daemon

WORKER_ENV = {
    "CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
    "CVQ_WORKER__HANDLER_OPTIONS": json.dumps({"latency_ms": 20}),
    "CVQ_WORKER__MAX_IN_FLIGHT": "8",
}


def _started_by_slot(daemon) -> dict[str, dg.DagsterRun]:
    return {r.tags[tags.WORKER_SLOT]: r for r in active_worker_runs(daemon.instance)
            if r.status == dg.DagsterRunStatus.STARTED}


def _worker_pid(daemon, run_id: str) -> int | None:
    for entry in daemon.instance.all_logs(run_id):
        match = re.search(r"\(pid (\d+)\)", entry.user_message or "")
        if match:
            return int(match.group(1))
    return None


def _exactly_once(conn, settings, jobs, timeout_s=120):
    results = read_topic(conn, settings.topic_names.results, expect=len(jobs), timeout_s=timeout_s)
    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == {j.job_id for j in jobs}, f"{len(set(per_job))} of {len(jobs)} jobs have results"
    assert max(per_job.values()) == 1


def test_worker_fleet_under_the_daemon(conn, settings, tmp_path):
    provision(admin_client(conn), topic_specs(settings))
    producer = JobProducer(conn, settings.topic_names.main)
    with running_daemon(tmp_path, settings.namespace, WORKER_ENV) as daemon:
        wait_for(lambda: len(_started_by_slot(daemon)) == len(SLOTS), 180,
                 "the fleet sensor to start one worker run per slot")
        runs = _started_by_slot(daemon)
        assert sorted(runs) == SLOTS == ["0-1", "2-3", "4-5", "6-7"]
        for slot, run in runs.items():
            assert run.job_name == WORKER_JOB and run.tags["dagster/partition"] == slot
        assert len(active_worker_runs(daemon.instance)) == len(SLOTS)  # never two runs for a slot

        jobs = list(sample_jobs(300, seed=21, prefix="fleet"))
        producer.enqueue_batch(jobs)
        _exactly_once(conn, settings, jobs)

        victim = runs["2-3"]
        pid = _worker_pid(daemon, victim.run_id)
        assert pid is not None, "the worker run logs its pid"
        more = list(sample_jobs(300, seed=22, prefix="during-kill"))
        producer.enqueue_batch(more)
        os.kill(pid, signal.SIGKILL)
        failed = daemon.wait_run(victim.run_id, {dg.DagsterRunStatus.FAILURE}, 120)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        wait_for(lambda: "2-3" in _started_by_slot(daemon) and _started_by_slot(daemon)["2-3"].run_id
                 != victim.run_id, 120, "a replacement run for slot 2-3")
        _exactly_once(conn, settings, jobs + more)

        to_terminate = list(_started_by_slot(daemon).values())[:2]
        for run in to_terminate:
            assert daemon.instance.run_coordinator.cancel_run(run.run_id)
        for run in to_terminate:
            ended = daemon.wait_run(run.run_id, {dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE}, 120)
            assert ended.status == dg.DagsterRunStatus.CANCELED
            messages = " ".join(e.user_message or "" for e in daemon.instance.all_logs(run.run_id))
            assert "termination requested; committing completed work" in messages

        wait_for(lambda: len(_started_by_slot(daemon)) == len(SLOTS), 120, "replacements for the terminated runs")
        before_stop = {r.run_id for r in active_worker_runs(daemon.instance)}
        stop = daemon.cli("job", "launch", "-j", "stop_worker_fleet", "-w", "workspace.yaml",
                          "--config-json", json.dumps({"ops": {"stop_fleet": {"config": {"wait_s": 90}}}}))
        assert stop.returncode == 0, stop.stdout + stop.stderr
        wait_for(lambda: not active_worker_runs(daemon.instance), 150, "every worker run to end after the stop")
        [stop_run] = daemon.instance.get_runs(filters=dg.RunsFilter(job_name="stop_worker_fleet"))
        assert daemon.wait_run(stop_run.run_id, {dg.DagsterRunStatus.SUCCESS}, 60)
        time.sleep(8)  # two fleet sensor ticks: nothing is relaunched while the fleet is stopped
        assert not active_worker_runs(daemon.instance)
        ended = [daemon.instance.get_run_by_id(run_id) for run_id in before_stop]
        assert {r.status for r in ended} == {dg.DagsterRunStatus.SUCCESS}  # a fleet stop is a clean end
    lag = committed_offsets(admin_client(conn), settings.group_id, settings.topic_names.main, list(range(8)))
    assert all(v is not None for v in lag.values())


def test_reprocess_dlq_launched_with_the_cli(conn, settings, tmp_path):
    provision(admin_client(conn), topic_specs(settings))
    raw = Producer(conn.client_config())
    for i in range(7):
        _plant_letter(raw, settings, f"perm-{i}".encode(), PermanentJobError("x"), ErrorCategory.PERMANENT,
                      now_ms() - 5000)
    raw.flush(10)
    config = tmp_path / "replay.yaml"
    config.write_text(yaml.safe_dump({"ops": {"reprocess_dead_letters": {"config": {
        "categories": ["permanent"], "max_messages": 100}}}}))
    with running_daemon(tmp_path, settings.namespace, {"CVQ_FLEET__SENSOR_INTERVAL_S": "3600"}) as daemon:
        launched = daemon.cli("job", "launch", "-j", "reprocess_dlq", "-w", "workspace.yaml", "-c", str(config))
        assert launched.returncode == 0, launched.stdout + launched.stderr
        [run] = daemon.instance.get_runs(filters=dg.RunsFilter(job_name="reprocess_dlq"))
        assert daemon.wait_run(run.run_id, {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE},
                               180).status == dg.DagsterRunStatus.SUCCESS
        assert run.tags.get(tags.ROLE) == tags.ROLE_DLQ_REPLAY
    replayed = read_topic(conn, settings.topic_names.main, expect=7)
    assert sorted(m.key() for m in replayed) == [f"perm-{i}".encode() for i in range(7)]
