"""Dagster as the production deployment runs it: a gRPC code server, the webserver and the daemon as three processes
on one DAGSTER_HOME that holds deploy/dagster.yaml (Postgres storage), the webserver and daemon loading the code over
gRPC. Every process group started here is stopped on leaving, also after a failure."""

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psutil
import yaml
from dagster._grpc.client import DagsterGrpcClient

from cv_queue_tests.daemon import BIN, PROJECT_ROOT, Daemon
from cv_queue_tests.daemon import _stop as stop_fleet_then_daemon
from cv_queue_tests.deploy.postgres import PostgresServer, free_port
from cv_queue_tests.support import wait_for

PRODUCTION_INSTANCE = PROJECT_ROOT / "deploy" / "dagster.yaml"
LOCATION = "cv_queue"
START_TIMEOUT_S = 120.0  # three Dagster processes importing the definitions at once on 2 shared cores
STOP_TIMEOUT_S = 30.0


@dataclass
class ProductionDagster:
    home: Path
    env: dict[str, str]
    logs: Path
    code_port: int
    web_port: int
    instance: dg.DagsterInstance
    code_server: subprocess.Popen | None = None
    webserver: subprocess.Popen | None = None
    daemon: Daemon | None = None
    # Every process group started, including code servers that were replaced: all are stopped at the end.
    groups: list[subprocess.Popen] = field(default_factory=list)

    @property
    def workspace(self) -> Path:
        return self.home / "workspace.yaml"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.groups.append(proc)
        return proc

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start_code_server(self) -> None:
        self.code_server = self._spawn("code-server", [
            str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(self.code_port),
            "-m", "cv_queue.definitions", "--location-name", LOCATION])
        wait_for(self._code_server_answers, START_TIMEOUT_S, f"the code server on port {self.code_port}",
                 interval_s=1.0)

    def _code_server_answers(self) -> bool:
        assert self.code_server is not None and self.code_server.poll() is None, \
            f"the code server exited:\n{self.tail('code-server')}"
        try:
            # The proxy answers before its gRPC child has loaded the definitions: ask for them.
            DagsterGrpcClient(port=self.code_port, host="127.0.0.1").list_repositories()
            return True
        except Exception:  # not listening, or not loaded yet
            return False

    def kill_code_server(self) -> int:
        """SIGKILL the code server, as a crash would end it: `dagster code-server start` and the gRPC server it runs
        (which watches the run processes it launched, and would report their deaths). The runs, the worker runs among
        them, are other processes and keep going. Returns the pid."""
        assert self.code_server is not None
        pid = self.code_server.pid
        servers = [psutil.Process(pid)] + [child for child in psutil.Process(pid).children(recursive=True)
                                           if "grpc" in " ".join(child.cmdline())]
        for server in servers:
            with contextlib.suppress(psutil.NoSuchProcess):
                server.kill()
        self.code_server.wait(STOP_TIMEOUT_S)
        psutil.wait_procs(servers, timeout=STOP_TIMEOUT_S)
        return pid

    def start_webserver(self) -> None:
        self.webserver = self._spawn("webserver", [
            str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.web_port), "-w", str(self.workspace)])

    def wait_webserver(self) -> None:
        def answers() -> bool:
            assert self.webserver is not None and self.webserver.poll() is None, \
                f"dagster-webserver exited:\n{self.tail('webserver')}"
            try:
                with urllib.request.urlopen(f"{self.web_url}/server_info", timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(answers, START_TIMEOUT_S, "dagster-webserver to answer", interval_s=1.0)

    def start_daemon(self) -> None:
        proc = self._spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)])
        self.daemon = Daemon(self.home, self.env, proc, self.logs / "daemon.log", self.instance)


def _workspace(code_port: int) -> dict:
    return {"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": code_port, "location_name": LOCATION}}]}


@contextlib.contextmanager
def production_dagster(tmp_path: Path, postgres: PostgresServer, extra_env: dict[str, str]) -> Iterator[
        ProductionDagster]:
    """The three processes on deploy/dagster.yaml with CVQ_RUN_LAUNCHER=default. The caller's process must have the
    same DAGSTER_POSTGRES_* and CVQ_RUN_LAUNCHER in os.environ (the instance resolves them where it is loaded)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PRODUCTION_INSTANCE, home / "dagster.yaml")
    code_port = free_port()
    (home / "workspace.yaml").write_text(yaml.safe_dump(_workspace(code_port)))
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, **extra_env, "DAGSTER_HOME": str(home), **postgres.dagster_env(),
           "CVQ_RUN_LAUNCHER": "default"}
    # Create the schema here, once, before three processes race to create it.
    instance = dg.DagsterInstance.from_config(str(home))
    dagster = ProductionDagster(home, env, logs, code_port, free_port(), instance)
    try:
        dagster.start_code_server()
        dagster.start_webserver()
        dagster.start_daemon()
        dagster.wait_webserver()
        yield dagster
    finally:
        _stop_all(dagster)
        instance.dispose()


def _stop_all(dagster: ProductionDagster) -> None:
    if dagster.daemon is not None:
        # The fleet ends through its stop flag first (the daemon's helper), while a code server still answers.
        with contextlib.suppress(Exception):
            stop_fleet_then_daemon(dagster.daemon.proc, dagster.daemon)
    for proc in reversed(dagster.groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in reversed(dagster.groups):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group: a code server's gRPC child and its run processes too
        if proc.poll() is None:
            proc.wait(10)
