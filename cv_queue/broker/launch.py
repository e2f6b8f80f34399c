"""The pieces of starting one KRaft node: a port check, configs, storage formatting and the detached JVM."""

import os
import socket
import subprocess
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from cv_queue.broker.errors import BrokerError
from cv_queue.broker.node_config import NodeLayout, render_server_properties
from cv_queue.broker.scram import redact
from cv_queue.broker.state import NodeState

if TYPE_CHECKING:
    from cv_queue.broker.security import BrokerSecurity

# Small heaps, the serial collector (no parallel GC threads) and an OOM exit keep three nodes
# comfortable on a 2-core, shared machine. The C1 compiler alone (TieredStopAtLevel=1): a local broker starts in
# about half the CPU (3.2 s instead of 6.0 s measured here, and a quarter less while idle), and its loads are a
# developer's and a test suite's, which never reach the code C2 would make faster.
_FAST_START = ["-XX:TieredStopAtLevel=1", "-Xshare:auto"]
_JVM_FLAGS = [
    *_FAST_START,
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:ActiveProcessorCount=2",
    "-Xss512k",
    "-Djava.awt.headless=true",
]


def check_port_free(port: int) -> None:
    """Raise unless the node could listen on 127.0.0.1:port.

    The bind uses SO_REUSEADDR because the JVM's server sockets do: only a socket that is bound or
    listening there blocks Kafka, while TIME_WAIT connections left by a stop or a crash (they last about a
    minute) do not, and must not make a restart refuse.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BrokerError(
                f"Port 127.0.0.1:{port} is already in use ({exc.strerror}).",
                "stop whatever listens there (`cv-queue broker status`, `ss -ltnp`) or pass --port N "
                "to use other ports.",
            ) from exc


def existing_cluster_id(data_dir: Path) -> str | None:
    """The cluster id a formatted node data dir belongs to, or None if it was never formatted."""
    meta = data_dir / "meta.properties"
    if not meta.is_file():
        return None
    try:
        text = meta.read_text()
    except OSError as exc:
        raise BrokerError(f"Cannot read {meta}: {exc.strerror}.", "fix the data dir's permissions.") from exc
    for line in text.splitlines():
        if line.startswith("cluster.id="):
            return line.split("=", 1)[1].strip()
    return None


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class NodeLauncher:
    """Writes a cluster's configs under <data_root>/conf and starts (and formats, if needed) its nodes."""

    def __init__(self, java: Path, libs: Path, data_root: Path, layout: list[NodeLayout],
                 security: "BrokerSecurity | None" = None) -> None:
        self.java, self.libs, self.data_root, self.layout = java, libs, data_root, layout
        self.security = security
        package = resources.files("cv_queue.broker")
        self.conf_dir = data_root / "conf"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.tools_log = self.conf_dir / "log4j2-tools.properties"
        self.broker_log = self.conf_dir / "log4j2-broker.properties"
        self.tools_log.write_text(package.joinpath("log4j2-tools.properties").read_text())
        self.broker_log.write_text(package.joinpath("log4j2-broker.properties").read_text())
        # Rendered from the layout every time, so a restart runs the same ports and dirs as before.
        for node in layout:
            self._write_properties(node)

    def _write_properties(self, node: NodeLayout) -> None:
        path = self.properties_file(node)
        text = render_server_properties(node, self.layout, self.security)
        # A secured node's properties hold the admin's password (inter-broker login): owner-only, from creation on.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)

    def properties_file(self, node: NodeLayout) -> Path:
        return self.conf_dir / f"server-{node.node_id}.properties"

    def node_state(self, node: NodeLayout) -> NodeState:
        return NodeState(
            node_id=node.node_id, pid=0, client_port=node.client_port, controller_port=node.controller_port,
            data_dir=str(node.data_dir), log_file=str(self.data_root / f"node-{node.node_id}.log"),
            properties_file=str(self.properties_file(node)),
        )

    def format_if_new(self, node: NodeLayout, cluster_id: str) -> None:
        """Format the node's storage unless it already is: formatting again would lose its data."""
        if existing_cluster_id(node.data_dir) is not None:
            return
        node.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(self.java), "-Xmx256m", *_FAST_START, f"-Dlog4j2.configurationFile={self.tools_log}",
            "-cp", f"{self.libs}/*",
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties_file(node)),
        ]
        if self.security is not None:  # the SCRAM users exist from the first metadata record on
            cmd += self.security.format_arguments()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            output = proc.stderr.strip() or proc.stdout.strip()
            raise BrokerError(
                f"Formatting KRaft storage for node {node.node_id} failed:\n"
                f"{redact(output, self.security.credentials) if self.security else output}",
                "if the data dir holds another cluster's data, pick an empty --data-dir.",
            )

    def launch(self, node: NodeState) -> int:
        """Start the node's JVM, detached from the caller; returns its pid."""
        heap = ["-Xms128m", "-Xmx512m"] if len(self.layout) == 1 else ["-Xms128m", "-Xmx384m"]
        log = open(node.log_file, "ab")  # noqa: SIM115 - handed to the child, closed right after the fork
        try:
            proc = subprocess.Popen(
                [
                    str(self.java), *heap, *_JVM_FLAGS, f"-Dlog4j2.configurationFile={self.broker_log}",
                    "-cp", f"{self.libs}/*", "kafka.Kafka", node.properties_file,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: survives the CLI that started it, immune to its Ctrl-C
            )
        finally:
            log.close()
        return proc.pid
