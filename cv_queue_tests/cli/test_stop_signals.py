"""Stops that never depend on how the process was started, or on an idle machine.

`cv-queue worker` and `cv-queue dlq replay` are started as a background job of a non-interactive shell starts them
(SIGINT ignored), with a busy loop per core running beside them. Ctrl-C (SIGINT) and SIGHUP must still stop them as
SIGTERM does: the worker commits what it finished and exits 0, and a second worker finishes the rest, so every job
has exactly one result; a lingering replay ends its linger and exits 0. (`cv-queue dev` is tested the same way in
test_dev_stop.py.) Before each command installed its own handlers, an inherited-ignored SIGINT did nothing to a
lingering replay, and SIGHUP killed a worker outright.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client.producer import JobProducer
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.kafka.procs import spawn_worker, started, stop_all
from cv_queue_tests.kafka.test_replay_crash_points import plant_letters
from cv_queue_tests.stress import cpu_hog, with_sigint_ignored
from cv_queue_tests.support import results_by_job, unique, wait_for

JOBS = 300
STOP_BOUND_S = 90.0  # generous for a starved CPU; the point is that it stops at all, and cleanly
ONE_SLOT = {"CVQ_TOPICS__PARTITIONS_PER_WORKER": "8"}  # one worker owns all 8 partitions: slot 0-7


def _worker(settings, log: Path) -> subprocess.Popen:
    env = {**os.environ, "CVQ_NAMESPACE": settings.namespace,
           "CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
           "CVQ_WORKER__HANDLER_OPTIONS": json.dumps({"latency_ms": 50}), "CVQ_WORKER__MAX_IN_FLIGHT": "8",
           "CVQ_WORKER__PROGRESS_INTERVAL_S": "1", **ONE_SLOT}
    with log.open("ab") as out:
        return subprocess.Popen(with_sigint_ignored([CV_QUEUE, "worker", "--partitions", "0-7"]), env=env,
                                stdout=out, stderr=out)


# SIGHUP: a worker that relied on the defaults died at once, without committing. (Its SIGINT handler was its own.)
@pytest.mark.parametrize("sig", [signal.SIGHUP])
def test_a_worker_started_with_sigint_ignored_stops_cleanly_on_a_busy_machine(conn, provisioned, tmp_path, sig):
    settings = provisioned
    jobs = list(sample_jobs(JOBS, seed=7, prefix=unique("stop-")))
    JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
    log = tmp_path / "worker.log"
    proc = _worker(settings, log)
    try:
        wait_for(lambda: started(log) or proc.poll() is not None, 180, "the worker to start", interval_s=0.5)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        wait_for(lambda: len(results_by_job(conn, settings, timeout_s=60)) >= 20 or proc.poll() is not None, 180,
                 "the worker's first results", interval_s=1)
        with cpu_hog():  # the stop, with every core busy: only around it, the rest of the suite runs beside this
            proc.send_signal(sig)
            try:
                code = proc.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{signal.Signals(sig).name} did not stop the worker within {STOP_BOUND_S:.0f}s:\n"
                            + log.read_text(errors="replace")[-3000:])
    finally:
        stop_all(proc)
    assert code == 0, f"exit {code}:\n" + log.read_text(errors="replace")[-3000:]
    assert "stopping after in-flight jobs" in log.read_text(errors="replace")

    # What the stopped worker committed, plus what a second worker does after it: each job exactly once.
    second_log = tmp_path / "second.log"
    second = spawn_worker(settings, "0-7", second_log, latency_ms=1, extra_env=ONE_SLOT)
    try:
        wait_for(lambda: len(results_by_job(conn, settings, timeout_s=60)) >= JOBS, 180, "every job's result",
                 interval_s=1)
    finally:
        stop_all(second)
    results = results_by_job(conn, settings, timeout_s=60)
    assert set(results) == {job.job_id for job in jobs}
    assert [job for job, n in results.items() if n > 1] == []


# SIGINT: inherited ignored, it did nothing to a replay that relied on the defaults.
@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_a_lingering_replay_started_with_sigint_ignored_ends_on_a_busy_machine(conn, provisioned, tmp_path, sig):
    settings = provisioned
    planted = plant_letters(conn, settings)
    out, err = tmp_path / "replay.out", tmp_path / "replay.err"
    env = {**os.environ, "CVQ_NAMESPACE": settings.namespace}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        command = [CV_QUEUE, "dlq", "replay", "--metrics-port", "0", "--metrics-linger", "600"]
        proc = subprocess.Popen(with_sigint_ignored(command), env=env, stdout=stdout, stderr=stderr)
    try:
        wait_for(lambda: "replayed" in out.read_text() or proc.poll() is not None, 180, "the replay's report",
                 interval_s=0.5)
        assert proc.poll() is None, err.read_text()[-3000:]
        with cpu_hog():
            proc.send_signal(sig)
            try:
                code = proc.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{signal.Signals(sig).name} did not end the replay's linger within {STOP_BOUND_S:.0f}s")
    finally:
        stop_all(proc)
    assert code == 0, err.read_text()[-3000:]
    assert f"replayed {len(planted)}," in out.read_text()
