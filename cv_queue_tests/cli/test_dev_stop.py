"""`cv-queue dev` heals from a crash and stops everything it started, directly or through Dagster.

1. Started, with jobs in flight, every process of its tree is SIGKILLed at once, as a host crash would.
2. Started again at once on the same ports and state, as a background job of a non-interactive shell starts it
   (`make run &` in a script: SIGINT ignored, which Python and every child inherit): it fails the runs the crash left
   STARTED, which nothing else would ever report, and every slot serves within 90 s of its start-up, every job exactly
   once (read_committed).
3. Its Ctrl-C comes while a busy loop runs on every core: within 60 s no process of its tree is left, its UI and
   broker ports are free, and its worker runs ended SUCCESS or CANCELED, never FAILURE.

The SIGTERM stop (what a supervisor sends) is the UI test's (cv_queue_tests/ui/dev_stack.py)."""

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psutil
import pytest

from cv_queue.defs.workers import SLOTS, WORKER_JOB
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.conftest import CV_QUEUE, PROJECT_ROOT
from cv_queue_tests.stress import cpu_hog, with_sigint_ignored
from cv_queue_tests.support import free_port_block, results_by_job, unique, wait_for

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(900)]

STOP_DEADLINE_S = 60.0  # what the issue asks of a stop
SERVE_BOUND_S = 90.0  # from a restarted cv-queue dev's "is running" to every slot serving again (after a crash)
BEFORE_CRASH, AFTER_CRASH = 120, 240
TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE}


class Dev:
    """A `cv-queue dev` subprocess in its own process group, with every process ever seen below it."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc, self.log = proc, log
        self.tree: dict[tuple[int, float], psutil.Process] = {}
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        root = psutil.Process(self.proc.pid)
        self.tree[(root.pid, root.create_time())] = root
        while not self._done.wait(0.3):
            for proc in list(self.tree.values()):
                try:
                    for child in proc.children(recursive=True):
                        self.tree.setdefault((child.pid, child.create_time()), child)
                except psutil.Error:
                    continue

    def alive(self) -> list[psutil.Process]:
        return [p for p in list(self.tree.values()) if _running(p)]

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop_watching(self) -> None:
        self._done.set()
        self._watcher.join(5)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _listening(port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in psutil.net_connections("tcp"))


def _ui_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def _dev(tmp_path: Path, run: str, ui_port: int, broker_port: int, sample_jobs: int,
         inherit_sigint_ignored: bool = False) -> Iterator[Dev]:
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP_SERVERS"}  # its own broker
    env.update(DAGSTER_HOME=str(tmp_path / "dagster_home"), CVQ_FLEET__SENSOR_INTERVAL_S="3")
    log = tmp_path / f"dev-{run}.log"
    with log.open("wb") as out:
        command = [CV_QUEUE, "dev", "--port", str(ui_port), "--broker-port", str(broker_port),
                   "--state-dir", str(tmp_path / "state"), "--sample-jobs", str(sample_jobs)]
        proc = subprocess.Popen(with_sigint_ignored(command) if inherit_sigint_ignored else command,
                                env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    dev = Dev(proc, log)
    try:
        yield dev
    finally:  # a failed test must not leave the stack running
        dev.stop_watching()
        for p in dev.alive():
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.wait(30)


def _wait_for_fleet(dev: Dev, instance: dg.DagsterInstance, since: datetime | None) -> None:
    def fleet_started() -> bool:
        assert dev.proc.poll() is None, f"cv-queue dev exited early ({dev.proc.returncode}):\n{dev.tail()}"
        started = instance.get_runs(filters=dg.RunsFilter(
            job_name=WORKER_JOB, statuses=[dg.DagsterRunStatus.STARTED], created_after=since))
        return len(started) == len(SLOTS)

    wait_for(fleet_started, 400, f"the {len(SLOTS)} partition_worker runs to be STARTED", interval_s=1)


def _stop_and_check(dev: Dev, sig: int, ports: list[int], instance: dg.DagsterInstance,
                    since: datetime | None = None) -> float:
    """Send `sig` to dev's group as a supervisor or a terminal would; returns seconds until all was gone. The worker
    runs created since `since` (all by default) must have ended SUCCESS or CANCELED."""
    before = len(dev.alive())
    assert before >= 5, f"only {before} processes seen under cv-queue dev"
    sent = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(dev.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground group
    else:
        dev.proc.send_signal(sig)
    try:
        dev.proc.wait(STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cv-queue dev did not exit within {STOP_DEADLINE_S:.0f}s:\n{dev.tail()}")
    wait_for(lambda: not dev.alive(), max(1.0, STOP_DEADLINE_S - (time.monotonic() - sent)),
             "every process cv-queue dev started to end")
    elapsed = time.monotonic() - sent
    assert dev.proc.returncode == 0, dev.tail()
    assert not [p for p in ports if _listening(p)], f"ports still listening:\n{dev.tail()}"
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=WORKER_JOB, created_after=since))
    statuses = {r.run_id: r.status for r in runs}
    assert statuses and set(statuses.values()) <= {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED}, \
        f"worker runs: {statuses}\n{dev.tail()}"
    active = [r for r in instance.get_runs() if r.status not in TERMINAL]
    assert not active, f"runs left active: {[(r.job_name, r.status) for r in active]}"
    print(f"{signal.Signals(sig).name}: cv-queue dev and its {before} processes gone in {elapsed:.1f}s")
    return elapsed


def _is_up(dev: Dev) -> bool:
    assert dev.proc.poll() is None, f"cv-queue dev exited early ({dev.proc.returncode}):\n{dev.tail()}"
    return "cv-queue is running." in dev.log.read_text(errors="replace")


def _crash(dev: Dev) -> None:
    """SIGKILL every process of dev's tree at once, as a host crash or the OOM killer would end them: the broker,
    `dagster dev`, the code server, the daemon, the worker runs. They start process groups of their own, so dev's
    group is not enough."""
    victims = dev.alive()
    kinds = " ".join(" ".join(p.cmdline()) for p in victims if _running(p))
    assert "java" in kinds and "dagster" in kinds, f"the tree lacks the broker or Dagster: {kinds[:2000]}"
    for proc in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    assert not dev.alive(), "a process of cv-queue dev survived SIGKILL"


def test_dev_heals_from_a_crash_and_stops_on_ctrl_c_it_inherited_ignored(tmp_path, monkeypatch):
    ui_port, broker_port = free_port_block(width=1), free_port_block(width=1)
    ports = [ui_port, broker_port, broker_port + 100]  # the UI, the broker and its controller
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")  # what cv-queue dev puts there too
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # dagster.yaml reads its storage dir from it
    namespace = unique("dev")
    monkeypatch.setenv("CVQ_NAMESPACE", namespace)  # cv-queue dev and this test on the same topics
    instance = dg.DagsterInstance.from_config(str(home))
    conn = KafkaConnection(bootstrap_servers=f"127.0.0.1:{broker_port}")
    settings = QueueSettings(namespace=namespace)

    # 1. Started, with jobs in flight, then a host crash: the worker runs are left STARTED in the instance, and nothing
    # will ever report their deaths (the code server that launched them is gone).
    before = list(sample_jobs(BEFORE_CRASH, seed=61, prefix=unique("pre-crash-")))
    with _dev(tmp_path, "first", ui_port, broker_port, sample_jobs=0) as first:
        _wait_for_fleet(first, instance, since=None)
        assert _ui_answers(ui_port)
        JobProducer(conn, settings.topic_names.main).enqueue_batch(before)
        wait_for(lambda: len(results_by_job(conn, settings, timeout_s=60)) >= BEFORE_CRASH // 2, 180,
                 "half the jobs' results", interval_s=1)
        _crash(first)
    stranded = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert stranded, "the crash left no run STARTED: the test lost its point"

    # 2. Started again at once, on the same ports and state, as a background job of a script starts it (SIGINT
    # ignored, which Python and every child inherit): it fails the stranded runs as it starts, and within 90 s of its
    # start-up every slot serves: every job, from before the crash and after, has exactly one result (read_committed).
    after = list(sample_jobs(AFTER_CRASH, seed=62, prefix=unique("post-crash-")))
    healed_at = datetime.now(UTC)
    with _dev(tmp_path, "second", ui_port, broker_port, sample_jobs=0, inherit_sigint_ignored=True) as second:
        wait_for(lambda: _is_up(second), 400, "the restarted cv-queue dev to be up", interval_s=1)
        up_at = time.monotonic()
        JobProducer(conn, settings.topic_names.main).enqueue_batch(after)
        wanted = {job.job_id for job in before + after}
        wait_for(lambda: wanted <= set(results_by_job(conn, settings, timeout_s=60)), SERVE_BOUND_S,
                 f"every job's result within {SERVE_BOUND_S:.0f}s of the restart (every slot serving again)",
                 interval_s=2)
        print(f"every slot served again {time.monotonic() - up_at:.0f}s after the restarted cv-queue dev was up")
        results = results_by_job(conn, settings, timeout_s=60)
        assert set(results) == wanted
        assert [job for job, n in results.items() if n > 1] == [], "a job has two results"
        for run in stranded:
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE, run.job_name

        # 3. Ctrl-C, which it inherited ignored, while a busy loop runs on every core: the stop holds all the same.
        with cpu_hog():
            _stop_and_check(second, signal.SIGINT, ports, instance, since=healed_at)
