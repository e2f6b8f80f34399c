"""The state file: what `broker start` launched (ports, data, pids), so later commands can find it."""

import os
import time
from datetime import datetime
from pathlib import Path

import psutil
from pydantic import BaseModel

from cv_queue.broker.fetch import cache_root


class NodeState(BaseModel):
    node_id: int
    pid: int
    client_port: int
    controller_port: int
    data_dir: str
    log_file: str
    properties_file: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.client_port}"


class BrokerState(BaseModel):
    """What `broker start` launched; persisted as JSON in the state file."""

    kafka_version: str
    cluster_id: str
    bootstrap: str
    data_root: str
    ephemeral: bool
    started_at: datetime
    nodes: list[NodeState]
    # A secured cluster (`--security sasl_ssl`) records where its CA, keystore and SCRAM passwords are; a state
    # file written before security existed reads as plaintext.
    security: str = "plaintext"
    ca_file: str | None = None
    keystore_file: str | None = None
    credentials_file: str | None = None


_EXEC_RETRIES = 20

#: The name the lifecycle API (restart_dead_nodes, kill_node) is documented with.
ClusterState = BrokerState


def default_state_file() -> Path:
    """$CVQ_BROKER_STATE, else <cache>/run/broker-state.json."""
    explicit = os.environ.get("CVQ_BROKER_STATE")
    return Path(explicit).expanduser() if explicit else cache_root() / "run" / "broker-state.json"


def read_state(state_file: Path) -> BrokerState | None:
    if not state_file.is_file():
        return None
    return BrokerState.model_validate_json(state_file.read_text())


def write_state(state_file: Path, state: BrokerState) -> None:
    """Replace the state file atomically, so a reader never sees half a file."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(state_file)


def node_process(node: NodeState) -> psutil.Process | None:
    """The live JVM of a node, or None. Checks the command line so a recycled pid is not mistaken for it."""
    cmdline: list[str] = []
    for _ in range(_EXEC_RETRIES):
        try:
            proc = psutil.Process(node.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if cmdline:
            break
        # A process still inside execve() (its launcher's Popen may already have returned) shows an empty
        # command line for a moment; on a loaded machine that moment is long enough to be seen.
        time.sleep(0.05)
    if "kafka.Kafka" in cmdline and node.properties_file in cmdline:
        return proc
    return None


def dead_nodes(state: BrokerState) -> list[NodeState]:
    return [node for node in state.nodes if node_process(node) is None]
