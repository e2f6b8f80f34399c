"""SIGKILL a worker process mid-flight and restart it: nothing lost, no committed result duplicated."""

import os
import signal
from collections import Counter

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import group_lag
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.messages import EvaluationResult
from cv_queue_tests.kafka.procs import spawn_worker, started
from cv_queue_tests.support import read_topic, wait_for


def test_kill_dash_nine_and_restart_loses_and_duplicates_nothing(conn, provisioned, tmp_path):
    settings = provisioned
    jobs = list(sample_jobs(1000, seed=9))
    deliveries = JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
    victim_slot = settings.slots()[0]
    victim_total = sum(1 for d in deliveries if d.partition in victim_slot.partitions)
    admin = admin_client(conn)

    procs = {s.name: spawn_worker(settings, s.name, tmp_path / f"{s.name}.log", latency_ms=40, in_flight=4)
             for s in settings.slots()}
    victim = procs[victim_slot.name]

    def victim_committed() -> int:
        lag = group_lag(admin, settings.group_id, settings.topic_names.main, list(victim_slot.partitions))
        return sum(x.committed or 0 for x in lag)

    wait_for(lambda: victim_committed() >= victim_total * 0.25, 90, "the victim to commit a quarter of its jobs")
    committed_at_kill = victim_committed()
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    assert committed_at_kill < victim_total, "the victim finished before it could be killed mid-flight"

    restarted = spawn_worker(settings, victim_slot.name, tmp_path / "restarted.log", latency_ms=40, in_flight=4)
    try:
        results = read_topic(conn, settings.topic_names.results, expect=len(jobs), timeout_s=120)
    finally:
        for proc in [*procs.values(), restarted]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        exits = {name: p.wait(60) for name, p in procs.items() if p is not victim}
        restarted_exit = restarted.wait(60)
    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == {j.job_id for j in jobs}, "jobs lost"
    assert max(per_job.values()) == 1, "a committed result was duplicated"
    assert started(tmp_path / "restarted.log")
    workers = Counter(EvaluationResult.model_validate_json(m.value()).worker.split(":")[1] for m in results)
    assert workers[str(victim.pid)] > 0 and workers[str(restarted.pid)] > 0  # both halves did real work
    assert all(code == 0 for code in exits.values()) and restarted_exit == 0  # SIGTERM is a clean stop
    lag = group_lag(admin, settings.group_id, settings.topic_names.main)
    assert all(x.committed == x.end_offset for x in lag)
