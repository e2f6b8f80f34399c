"""Starting, stopping, restarting and inspecting a local KRaft cluster of 1 or 3 nodes on 127.0.0.1.

`start_cluster` formats storage, launches one detached JVM per node and returns once the cluster is whole:
every node answers and lists every broker, every replica is in sync, and the group and transaction
coordinators answer. It records what it started in a state file so that `stop_cluster`, `cluster_status`
and the `cv-queue broker` CLI find it later.

Lifecycle after a crash (what `cv-queue broker start` does, and the API chaos tests use):

- `restart_dead_nodes(state_file)` starts every recorded node whose JVM is gone again, on its ports and
  its data (never reformatted), waits until the cluster is whole and returns the updated state.
- `start_cluster(...)` on a state file whose cluster is partly or wholly dead restarts it the same way,
  when the request fits the record (nodes, port and data dir unset or equal to the recorded ones).
- `kill_node(state_file, index)` SIGKILLs one node (index into `state.nodes`, 0-based) and waits until it
  is gone; `kill_cluster(state_file)` SIGKILLs them all. The state file stays, as after a real crash.
"""

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from cv_queue.broker.errors import BrokerError
from cv_queue.broker.fetch import KAFKA_VERSION, fetch_kafka
from cv_queue.broker.launch import NodeLauncher, check_port_free, existing_cluster_id
from cv_queue.broker.node_config import NodeLayout, new_cluster_id, plan_nodes
from cv_queue.broker.prerequisites import require_java
from cv_queue.broker.readiness import wait_ready
from cv_queue.broker.scram import CREDENTIALS_FILE
from cv_queue.broker.security import INTERNAL_PORT_OFFSET, BrokerSecurity, OwnTls, SecurityMode, security_of
from cv_queue.broker.state import (
    BrokerState,
    ClusterState,
    NodeState,
    dead_nodes,
    default_state_file,
    node_process,
    read_state,
    write_state,
)

__all__ = [
    "DEFAULT_PORT", "START_TIMEOUT_S", "STOP_TIMEOUT_S", "BrokerState", "ClusterState", "NodeState",
    "cluster_status", "default_state_file", "kill_cluster", "kill_node", "node_process", "read_state",
    "restart_dead_nodes", "start_cluster", "stop_cluster", "stop_node",
]

DEFAULT_PORT = 9092
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


def _prepare_data_root(data_dir: Path | None) -> tuple[Path, bool]:
    """The folder for node data and whether it is ephemeral (ours to delete on stop)."""
    if data_dir is None:
        return Path(tempfile.mkdtemp(prefix="cvq-kafka-")), True
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(
            f"Cannot create the data dir {data_dir}: {exc.strerror}.",
            "pick a --data-dir you can write to, or omit it for a temporary one.",
        ) from exc
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise BrokerError(
            f"The data dir {data_dir} is not readable and writable by this user.",
            f"fix its permissions (`chmod u+rwx {data_dir}`) or pick another --data-dir.",
        )
    return data_dir, False


def _fits(state: BrokerState, nodes: int | None, port: int | None, data_dir: Path | None,
          security: SecurityMode | None) -> bool:
    """Whether a start request names the recorded cluster (an unset value matches anything)."""
    return ((nodes is None or nodes == len(state.nodes))
            and (security is None or security == state.security)
            and (port is None or port == state.nodes[0].client_port)
            and (data_dir is None or data_dir.expanduser().resolve() == Path(state.data_root)))


def start_cluster(
    nodes: int | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    state_file: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
    progress: bool = True,
    security: SecurityMode | str | None = None,
    own_tls: OwnTls | None = None,
) -> BrokerState:
    """Start `nodes` (default 1) combined broker/controller JVMs from `port` (default 9092) and wait until
    the cluster is whole.

    `security="sasl_ssl"` starts a secured cluster (see cv_queue.broker.security): TLS from a CA generated into
    the data dir (or `own_tls`), SCRAM users created at format time with their passwords in a 0600 file there,
    and the StandardAuthorizer. The state records the CA and the credentials file. Default: plaintext.

    With a cluster already recorded in the state file: if all its nodes run, BrokerError (it is running).
    If some or all are dead and the request fits the record, the dead ones are restarted on their ports and
    data (see `restart_dead_nodes`). A wholly dead cluster that does not fit is forgotten (its ephemeral data
    removed) and a new one started; a partly running one that does not fit is refused.
    """
    if nodes is not None and nodes not in (1, 3):
        raise BrokerError(f"--nodes must be 1 or 3, not {nodes}.", "a KRaft quorum here is 1 or 3 voters.")
    mode = SecurityMode(security) if security is not None else None
    if own_tls is not None and mode != SecurityMode.SASL_SSL:
        raise BrokerError("TLS files were given for a plaintext broker.", "add --security sasl_ssl.")
    state_file = state_file or default_state_file()
    existing = read_state(state_file)
    if existing is not None:
        dead = dead_nodes(existing)
        alive = [n for n in existing.nodes if n not in dead]
        if not dead:
            raise BrokerError(
                f"A local broker is already running at {existing.bootstrap} "
                f"(pids {', '.join(str(n.pid) for n in alive)}; state {state_file}).",
                "use it, or run `cv-queue broker stop` first.",
            )
        if _fits(existing, nodes, port, data_dir, mode) and own_tls is None and Path(existing.data_root).is_dir():
            return restart_dead_nodes(state_file, timeout_s, progress)
        if alive:
            raise BrokerError(
                f"The local broker recorded in {state_file} ({existing.bootstrap}, data {existing.data_root}) "
                f"has node(s) {[n.node_id for n in alive]} running and {[n.node_id for n in dead]} dead, "
                "and is not the cluster asked for.",
                "run `cv-queue broker start` without --nodes/--port/--data-dir to restart its dead nodes, "
                "or `cv-queue broker stop` first.",
            )
        if existing.ephemeral:  # stale: every process it names is gone; so is the need for its data
            shutil.rmtree(existing.data_root, ignore_errors=True)
        state_file.unlink()
    return _start_new(nodes or 1, port or DEFAULT_PORT, data_dir, state_file, timeout_s, progress,
                      mode or SecurityMode.PLAINTEXT, own_tls)


def _prepare_security(mode: SecurityMode, own_tls: OwnTls | None, data_root: Path,
                      formatted: bool) -> BrokerSecurity | None:
    if mode == SecurityMode.PLAINTEXT:
        return None
    if formatted and not (data_root / CREDENTIALS_FILE).is_file():
        raise BrokerError(f"The data dir {data_root} holds a cluster formatted without the SCRAM users.",
                          "pick an empty --data-dir for a secured broker (users are created at format time).")
    security = BrokerSecurity.prepare(data_root, own_tls)
    if (problem := security.certificate_problem()) is not None:
        print(f"warning: {problem}; clients will refuse to connect", file=sys.stderr)
    return security


def _start_new(nodes: int, port: int, data_dir: Path | None, state_file: Path, timeout_s: float,
               progress: bool, mode: SecurityMode, own_tls: OwnTls | None) -> BrokerState:
    java = require_java()
    libs = fetch_kafka(KAFKA_VERSION, quiet=not progress)
    data_root, ephemeral = _prepare_data_root(data_dir)
    layout = plan_nodes(nodes, port, data_root)
    launched: list[psutil.Process] = []
    try:
        for node in layout:
            check_port_free(node.client_port)
            check_port_free(node.controller_port)
            if mode == SecurityMode.SASL_SSL:
                check_port_free(node.client_port + INTERNAL_PORT_OFFSET)
        cluster_id = next((cid for n in layout if (cid := existing_cluster_id(n.data_dir))), None)
        security = _prepare_security(mode, own_tls, data_root, formatted=cluster_id is not None)
        cluster_id = cluster_id or new_cluster_id()
        launcher = NodeLauncher(java, libs, data_root, layout, security)
        for node in layout:
            launcher.format_if_new(node, cluster_id)
        state = BrokerState(
            kafka_version=KAFKA_VERSION, cluster_id=cluster_id,
            bootstrap=",".join(n.bootstrap for n in layout), data_root=str(data_root), ephemeral=ephemeral,
            started_at=datetime.now(UTC), nodes=[launcher.node_state(n) for n in layout], security=mode.value,
            ca_file=str(security.tls.ca) if security else None,
            keystore_file=str(security.tls.keystore) if security else None,
            credentials_file=str(security.credentials_file) if security else None,
        )
        _launch_nodes(launcher, state, state.nodes, state_file, progress, launched)
        wait_ready(state, timeout_s, progress)
    except BaseException:
        # Stop what this call launched (by the processes themselves, not their command lines), then forget
        # the state file and the ephemeral data.
        _terminate(launched, 5)
        if read_state(state_file) is not None:
            stop_cluster(state_file, timeout_s=5, progress=False)
        elif ephemeral:
            shutil.rmtree(data_root, ignore_errors=True)
        raise
    return state


def _launch_nodes(launcher: NodeLauncher, state: BrokerState, nodes: list[NodeState], state_file: Path,
                  progress: bool, launched: list[psutil.Process]) -> None:
    """Start `nodes`, appending each process to `launched` at once so a failure path can stop it."""
    for node in nodes:
        node.pid = launcher.launch(node)
        with contextlib.suppress(psutil.NoSuchProcess):
            launched.append(psutil.Process(node.pid))
        # Written after every launch so a Ctrl-C half-way still leaves a state file `stop` can use.
        write_state(state_file, state)
    if progress:
        print(f"started Kafka {KAFKA_VERSION} node(s) {[n.node_id for n in nodes]} "
              f"(pids {[n.pid for n in nodes]}); waiting ...", file=sys.stderr)


def restart_dead_nodes(state_file: Path | None = None, timeout_s: float = START_TIMEOUT_S,
                       progress: bool = True) -> ClusterState:
    """Start every recorded node whose JVM is gone again, on its own ports and data, and wait until the
    cluster is whole (every broker seen, replicas in sync, coordinators answer).

    Data is kept: a node's storage is formatted only if its data dir holds none. Nodes that run are left
    alone, so this is a no-op on a healthy cluster. Returns the state with the new pids (also written to the
    state file). Raises BrokerError if nothing is recorded, a port is taken or a node does not come up; the
    nodes it launched are then stopped again.
    """
    state_file = state_file or default_state_file()
    state = read_state(state_file)
    if state is None:
        raise BrokerError(f"No local broker is recorded in {state_file}.", "start one with `cv-queue broker start`.")
    dead = dead_nodes(state)
    if not dead:
        return state
    data_root = Path(state.data_root)
    if not data_root.is_dir():
        raise BrokerError(f"The data of the recorded cluster ({data_root}) is gone.",
                          "run `cv-queue broker stop` to forget it, then start a new one.")
    for node in dead:
        check_port_free(node.client_port)
        check_port_free(node.controller_port)
        if state.security == SecurityMode.SASL_SSL:
            check_port_free(node.client_port + INTERNAL_PORT_OFFSET)
    if progress:
        print(f"restarting node(s) {[n.node_id for n in dead]} of the cluster at {state.bootstrap} "
              f"(data {data_root})", file=sys.stderr)
    layout = [NodeLayout(n.node_id, n.client_port, n.controller_port, Path(n.data_dir)) for n in state.nodes]
    security = security_of(state) if state.security == SecurityMode.SASL_SSL else None
    launcher = NodeLauncher(require_java(), fetch_kafka(KAFKA_VERSION, quiet=not progress), data_root, layout,
                            security)
    launched: list[psutil.Process] = []
    try:
        for node in layout:
            if node.node_id in {n.node_id for n in dead}:
                launcher.format_if_new(node, state.cluster_id)
        _launch_nodes(launcher, state, dead, state_file, progress, launched)
        wait_ready(state, timeout_s, progress)
    except BaseException:
        _terminate(launched, 5)  # only what this call started; the nodes that ran before keep running
        raise
    return state


def kill_node(state_file: Path | None, index: int) -> NodeState:
    """SIGKILL node `index` (0-based, in `state.nodes` order) of the recorded cluster, as a crash would, and
    wait until it is gone. The state file is kept, so `restart_dead_nodes` or `broker start` bring it back."""
    state = read_state(state_file or default_state_file())
    if state is None:
        raise BrokerError("No local broker is recorded.", "start one with `cv-queue broker start`.")
    node = state.nodes[index]
    proc = node_process(node)
    if proc is None:
        raise BrokerError(f"Kafka node {node.node_id} (pid {node.pid}) is not running.",
                          "`cv-queue broker status` shows what runs.")
    _sigkill([proc])
    return node


def kill_cluster(state_file: Path | None = None) -> ClusterState:
    """SIGKILL every running node of the recorded cluster and wait until they are gone; keeps the state file."""
    state = read_state(state_file or default_state_file())
    if state is None:
        raise BrokerError("No local broker is recorded.", "start one with `cv-queue broker start`.")
    _sigkill([p for n in state.nodes if (p := node_process(n)) is not None])
    return state


def _exited(proc: psutil.Process) -> bool:
    """Whether the process is gone. A zombie counts as gone: it holds no ports or files any more, and only its
    parent can reap it (the JVM's parent is whoever called start_cluster, maybe not this process)."""
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return not proc.is_running()
        if proc.num_threads() > 1:  # a killed JVM's main thread is a zombie while other threads still hold its ports
            return False
        with contextlib.suppress(psutil.Error, ChildProcessError):
            proc.wait(0)  # reaps it when it is our own child
        return True
    except psutil.NoSuchProcess:
        return True


def _wait_exited(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited; returns those still running at the timeout."""
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in procs if not _exited(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _sigkill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    if alive := _wait_exited(procs, 10):
        raise BrokerError(f"Kafka pid(s) {[p.pid for p in alive]} survived SIGKILL for 10s.", "check `ps`.")


def _terminate(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """SIGTERM, wait, then SIGKILL what is left; returns the processes that had to be killed."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    alive = _wait_exited(procs, timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _wait_exited(alive, 10)
    return alive


def stop_node(state: BrokerState, node_id: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop one node of a running cluster cleanly (SIGTERM, SIGKILL after timeout_s)."""
    node = next(n for n in state.nodes if n.node_id == node_id)
    proc = node_process(node)
    if proc is not None:
        _terminate([proc], timeout_s)


def stop_cluster(state_file: Path | None = None, timeout_s: float = STOP_TIMEOUT_S,
                 progress: bool = True) -> BrokerState | None:
    """Stop every node in the state file (SIGTERM, then SIGKILL after timeout_s) and remove ephemeral data.

    Returns the state that was stopped, or None if nothing was recorded.
    """
    state_file = state_file or default_state_file()
    state = read_state(state_file)
    if state is None:
        return None
    procs = [p for n in state.nodes if (p := node_process(n)) is not None]
    killed = _terminate(procs, timeout_s)
    if progress and killed:
        print(f"node(s) {[p.pid for p in killed]} ignored SIGTERM for {timeout_s:.0f}s and were killed",
              file=sys.stderr)
    if state.ephemeral:
        shutil.rmtree(state.data_root, ignore_errors=True)
    state_file.unlink(missing_ok=True)
    return state


def cluster_status(state_file: Path | None = None) -> tuple[BrokerState | None, dict[int, bool]]:
    """The recorded state and, per node id, whether its JVM is alive."""
    state = read_state(state_file or default_state_file())
    if state is None:
        return None, {}
    return state, {n.node_id: node_process(n) is not None for n in state.nodes}
