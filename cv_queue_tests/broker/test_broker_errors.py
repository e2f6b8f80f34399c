"""`cv-queue broker` fails early and says what to do: port taken, Java missing, Maven missing, bad data dir."""

import os
import shutil
import socket
import subprocess

from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.support import free_port_block


def _run(args, env=None, timeout=60):
    return subprocess.run([CV_QUEUE, "broker", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_port_taken(tmp_path):
    port = free_port_block(width=1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        proc = _run(["start", "--port", str(port), "--state-file", str(tmp_path / "s.json")])
    assert proc.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in proc.stderr
    assert "--port" in proc.stderr  # the hint
    assert not (tmp_path / "s.json").exists()


def test_java_missing(tmp_path):
    env = {"PATH": str(tmp_path / "empty-bin"), "JAVA_HOME": ""}
    proc = _run(["start", "--port", str(free_port_block(width=1)), "--state-file", str(tmp_path / "s.json")], env)
    assert proc.returncode == 2
    assert "Java was not found" in proc.stderr and "JAVA_HOME" in proc.stderr


def test_maven_missing_when_nothing_is_cached(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(shutil.which("java"))
    env = {"PATH": str(bin_dir), "JAVA_HOME": "", "CVQ_CACHE_DIR": str(tmp_path / "empty-cache")}
    proc = _run(["fetch"], env)
    assert proc.returncode == 2
    assert "Maven (`mvn`) was not found" in proc.stderr


def test_data_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = _run(["start", "--port", str(free_port_block(width=1)), "--data-dir", str(blocker / "data"),
                 "--state-file", str(tmp_path / "s.json")])
    assert proc.returncode == 2
    assert "Cannot create the data dir" in proc.stderr


def test_status_and_stop_with_nothing_running(tmp_path):
    status = _run(["status", "--state-file", str(tmp_path / "none.json")])
    assert status.returncode == 1 and "no local broker" in status.stdout
    stop = _run(["stop", "--state-file", str(tmp_path / "none.json")])
    assert stop.returncode == 0 and "no local broker" in stop.stderr
