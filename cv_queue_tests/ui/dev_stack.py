"""`cv-queue dev` for a test: its own broker and UI on free ports, a temporary DAGSTER_HOME and state dir,
and a stop by SIGTERM (what a supervisor sends) that is checked to leave nothing running."""

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil

from cv_queue.cli.process_tree import ProcessTree
from cv_queue_tests.conftest import CV_QUEUE, PROJECT_ROOT
from cv_queue_tests.support import free_port_block, wait_for

STOP_DEADLINE_S = 90.0  # cv-queue dev bounds its own stop to about a minute


@dataclass
class DevStack:
    ui_url: str
    instance: dg.DagsterInstance  # the same SQLite storage that `cv-queue dev`'s Dagster writes
    proc: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        assert self.proc.poll() is None, f"cv-queue dev exited ({self.proc.returncode}):\n{self.tail()}"


@contextmanager
def running_dev(tmp_path: Path, sample_jobs: int, fleet_sensor_interval_s: int = 3) -> Iterator[DevStack]:
    ui_port, broker_port = free_port_block(width=1), free_port_block(width=1)
    home, state = tmp_path / "dagster_home", tmp_path / "state"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")  # what cv-queue dev puts there too
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP_SERVERS"}  # its own broker
    env.update(DAGSTER_HOME=str(home), CVQ_FLEET__SENSOR_INTERVAL_S=str(fleet_sensor_interval_s))
    log = tmp_path / "cv-queue-dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [CV_QUEUE, "dev", "--port", str(ui_port), "--broker-port", str(broker_port), "--state-dir", str(state),
             "--sample-jobs", str(sample_jobs)],
            env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tree = ProcessTree(proc.pid)  # remembers run processes that leave the group, so none outlives the test
    try:
        previous_home = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(home)  # dagster.yaml reads its SQLite base_dir from it
        try:
            instance = dg.DagsterInstance.from_config(str(home))
        finally:
            if previous_home is None:
                os.environ.pop("DAGSTER_HOME", None)
            else:
                os.environ["DAGSTER_HOME"] = previous_home
        try:
            yield DevStack(f"http://127.0.0.1:{ui_port}", instance, proc, log)
        finally:
            instance.dispose()
    finally:
        _stop(proc, tree, log)


def _stop(proc: subprocess.Popen, tree: ProcessTree, log: Path) -> None:
    """SIGTERM, as a supervisor stops it; whatever is left after the deadline is killed, then reported."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_DEADLINE_S)
        wait_for(lambda: not tree.alive(), 30, "every process cv-queue dev started to end")
    except (subprocess.TimeoutExpired, AssertionError):
        left = tree.alive()
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.wait(10)
        raise AssertionError(f"cv-queue dev left {len(left)} process(es) after SIGTERM; killed them:\n"
                             + "\n".join(log.read_text(errors="replace").splitlines()[-40:])) from None
    finally:
        tree.close()
