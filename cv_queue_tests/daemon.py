"""A real `dagster-daemon` on a temporary DAGSTER_HOME, for the daemon tests and the end-to-end run."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from cv_queue.defs.fleet_state import set_fleet_stopped
from cv_queue.defs.workers import active_worker_runs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Daemon:
    """A `dagster-daemon run` subprocess on a temporary DAGSTER_HOME built from the project's dagster.yaml."""

    def __init__(self, home: Path, env: dict[str, str], proc: subprocess.Popen, log: Path) -> None:
        self.home, self.env, self.proc, self.log = home, env, proc, log
        self.instance = dg.DagsterInstance.from_config(str(home))

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "dagster"), *args], cwd=PROJECT_ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def wait_run(self, run_id: str, statuses: set[dg.DagsterRunStatus], timeout_s: float) -> dg.DagsterRun:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.status in statuses:
                return run
            self._check_alive()
            time.sleep(0.5)
        run = self.instance.get_run_by_id(run_id)
        raise AssertionError(f"run {run_id} is {run.status if run else None} after {timeout_s}s, not in {statuses}; "
                             f"daemon log tail:\n{self.tail()}")

    def _check_alive(self) -> None:
        assert self.proc.poll() is None, f"dagster-daemon exited ({self.proc.returncode}):\n{self.tail()}"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_daemon(tmp_path: Path, namespace: str, extra_env: dict[str, str] | None = None) -> Iterator[Daemon]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CVQ_NAMESPACE": namespace,
        "CVQ_FLEET__SENSOR_INTERVAL_S": "3",
        "CVQ_FLEET__RESTART_BACKOFF_S": "0",
        **(extra_env or {}),
    }
    log = tmp_path / "daemon.log"
    previous_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)  # dagster.yaml reads its SQLite base_dir from it
    # Create the SQLite storage before any Dagster process starts: processes creating it at the same time race on
    # its schema stamp ("Version table 'alembic_version' has more than one head present") and the code server fails.
    dg.DagsterInstance.from_config(str(home)).dispose()
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=PROJECT_ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    daemon = None
    try:
        daemon = Daemon(home, env, proc, log)
        yield daemon
    finally:
        _stop(proc, daemon)
        if previous_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous_home


def _stop(proc: subprocess.Popen, daemon: Daemon | None) -> None:
    if daemon is not None:
        # Stop the fleet the supported way so worker runs commit and exit, then stop the daemon.
        set_fleet_stopped(daemon.instance, True, "test-teardown")
        deadline = time.monotonic() + 60
        while active_worker_runs(daemon.instance) and time.monotonic() < deadline:
            time.sleep(1)
        for run in active_worker_runs(daemon.instance):
            with contextlib.suppress(Exception):
                daemon.instance.run_coordinator.cancel_run(run.run_id)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything the daemon's code server left behind
