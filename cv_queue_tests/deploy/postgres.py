"""A real PostgreSQL server for the tests: Debian's `postgresql` package, initdb'd into a temporary folder and
started on a free port of 127.0.0.1, owned by the `postgres` user when the tests run as root (postgres refuses root).
A missing server binary is an error, never a skip: `make test` installs the package (SYSTEM_PACKAGES)."""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

SERVER_GLOB = "/usr/lib/postgresql/*/bin/postgres"
SERVICE_USER = "postgres"  # created by Debian's postgresql package
USER, PASSWORD, DATABASE = "dagster", "dagster-test-password", "dagster"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str

    def dagster_env(self) -> dict[str, str]:
        """The DAGSTER_POSTGRES_* variables deploy/dagster.yaml reads."""
        return {"DAGSTER_POSTGRES_HOST": self.host, "DAGSTER_POSTGRES_PORT": str(self.port),
                "DAGSTER_POSTGRES_USER": self.user, "DAGSTER_POSTGRES_PASSWORD": self.password,
                "DAGSTER_POSTGRES_DB": self.database}

    def connect(self, database: str | None = None) -> "psycopg2.extensions.connection":
        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=database or self.database, connect_timeout=5)


def server_bin_dir() -> Path:
    """The newest installed server's bin folder; fails with the fix when the package is missing."""
    found = sorted(Path(p).parent for p in glob.glob(SERVER_GLOB))
    if not found:
        raise RuntimeError(f"no PostgreSQL server ({SERVER_GLOB}): install Debian's postgresql package "
                           "(`make system-deps` does, as root or with sudo)")
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_service_user() -> list[str]:
    """The command prefix that drops root to the postgres user (setpriv execs, so the pid is the server's)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise RuntimeError(f"running as root, and there is no {SERVICE_USER!r} user to run PostgreSQL as: "
                           "install Debian's postgresql package, which creates it") from exc
    return ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups", "--"]


def _hand_to_service_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SERVICE_USER, SERVICE_USER)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """initdb, start, create the database; on leaving (also after a failure) stop the server and delete its files."""
    bin_dir = server_bin_dir()
    # Not under pytest's tmp folders: those are private to root (0700), and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="cvq-postgres-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    proc: subprocess.Popen | None = None
    try:
        sockets.mkdir()
        password_file = root / "password"
        password_file.write_text(PASSWORD)
        for path in (root, sockets, password_file):
            _hand_to_service_user(path)
        initdb = subprocess.run(
            [*_as_service_user(), str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password_file}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True, timeout=120)
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}"
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*_as_service_user(), str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                 "-k", str(sockets),
                 # A throwaway server: durability buys nothing here, and the box is shared.
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = PostgresServer("127.0.0.1", port, USER, PASSWORD, DATABASE)
        _wait_ready(server, proc, log)
        with contextlib.closing(server.connect("postgres")) as admin:
            admin.autocommit = True
            admin.cursor().execute(f"CREATE DATABASE {DATABASE}")
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PostgresServer, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"postgres exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        try:
            server.connect("postgres").close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"postgres did not accept connections within {START_TIMEOUT_S:.0f}s ({exc}):\n"
                                     f"{log.read_text(errors='replace')}") from exc
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL. (SIGTERM is PostgreSQL's 'smart' shutdown, which waits for clients to disconnect;
    the Dagster processes are stopped before this, and a client left behind only costs the wait.)"""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the server's own children (checkpointer, walwriter, ...)
