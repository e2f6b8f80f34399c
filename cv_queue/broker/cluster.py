"""Starting, stopping and inspecting a local KRaft cluster of 1 or 3 nodes on 127.0.0.1.

`start_cluster` formats storage, launches one detached JVM per node and returns once an AdminClient
sees every broker and the group and transaction coordinators answer. It records what it started in a
state file so that `stop_cluster` and `cluster_status` (and the `cv-queue broker` CLI) find it later.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import psutil
from pydantic import BaseModel

from cv_queue.broker.errors import BrokerError
from cv_queue.broker.fetch import KAFKA_VERSION, cache_root, fetch_kafka
from cv_queue.broker.node_config import NodeLayout, new_cluster_id, plan_nodes, render_server_properties
from cv_queue.broker.prerequisites import require_java

DEFAULT_PORT = 9092
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0

# Small heaps, the serial collector (no parallel GC threads) and an OOM exit keep three nodes
# comfortable on a 2-core, shared machine.
_JVM_FLAGS = [
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:ActiveProcessorCount=2",
    "-Xss512k",
    "-Djava.awt.headless=true",
]


class NodeState(BaseModel):
    node_id: int
    pid: int
    client_port: int
    controller_port: int
    data_dir: str
    log_file: str
    properties_file: str


class BrokerState(BaseModel):
    """What `broker start` launched; persisted as JSON in the state file."""

    kafka_version: str
    cluster_id: str
    bootstrap: str
    data_root: str
    ephemeral: bool
    started_at: datetime
    nodes: list[NodeState]


def default_state_file() -> Path:
    """$CVQ_BROKER_STATE, else <cache>/run/broker-state.json."""
    explicit = os.environ.get("CVQ_BROKER_STATE")
    return Path(explicit).expanduser() if explicit else cache_root() / "run" / "broker-state.json"


def read_state(state_file: Path) -> BrokerState | None:
    if not state_file.is_file():
        return None
    return BrokerState.model_validate_json(state_file.read_text())


def _write_state(state_file: Path, state: BrokerState) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(state_file)


def node_process(node: NodeState) -> psutil.Process | None:
    """The live JVM of a node, or None. Checks the command line so a recycled pid is not mistaken for it."""
    try:
        proc = psutil.Process(node.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "kafka.Kafka" in cmdline and node.properties_file in cmdline:
        return proc
    return None


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BrokerError(
                f"Port 127.0.0.1:{port} is already in use ({exc.strerror}).",
                "stop whatever listens there (`cv-queue broker status`, `ss -ltnp`) or pass --port N "
                "to use other ports.",
            ) from exc


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


def _existing_cluster_id(node: NodeLayout) -> str | None:
    meta = node.data_dir / "meta.properties"
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


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _format_storage(java: Path, libs: Path, tools_log: Path, props: Path, cluster_id: str) -> None:
    cmd = [
        str(java), "-Xmx256m", f"-Dlog4j2.configurationFile={tools_log}", "-cp", f"{libs}/*",
        "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BrokerError(
            f"Formatting KRaft storage with {props} failed:\n{proc.stderr.strip() or proc.stdout.strip()}",
            "if the data dir holds another cluster's data, pick an empty --data-dir.",
        )


def _heap_flags(nodes: int) -> list[str]:
    return ["-Xms128m", "-Xmx512m"] if nodes == 1 else ["-Xms128m", "-Xmx384m"]


def _launch_node(java: Path, libs: Path, broker_log: Path, node: NodeState, heap: list[str]) -> int:
    log = open(node.log_file, "ab")  # noqa: SIM115 - handed to the child, closed right after the fork
    try:
        proc = subprocess.Popen(
            [
                str(java), *heap, *_JVM_FLAGS, f"-Dlog4j2.configurationFile={broker_log}",
                "-cp", f"{libs}/*", "kafka.Kafka", node.properties_file,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: survives the CLI that started it, immune to its Ctrl-C
        )
    finally:
        log.close()
    return proc.pid


def _wait_ready(state: BrokerState, timeout_s: float, progress: bool) -> None:
    """Block until every broker is registered and the coordinators answer, or raise with the log tail."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout_s
    quiet = {"log_level": 0, "logger": _silent_logger()}

    def check_alive() -> None:
        for node in state.nodes:
            if node_process(node) is None:
                raise BrokerError(
                    f"Kafka node {node.node_id} exited during start-up. Last log lines "
                    f"({node.log_file}):\n{_log_tail(Path(node.log_file))}",
                    "read the log above; a port conflict or a corrupt data dir are the usual causes.",
                )

    admin = AdminClient({"bootstrap.servers": state.bootstrap, **quiet})
    while True:
        check_alive()
        try:
            metadata = admin.list_topics(timeout=2)
            if len(metadata.brokers) == len(state.nodes):
                break
        except KafkaException:
            pass
        if time.monotonic() > deadline:
            raise BrokerError(
                f"Kafka did not register {len(state.nodes)} broker(s) within {timeout_s:.0f}s.",
                f"see the node logs under {Path(state.nodes[0].log_file).parent}.",
            )
        time.sleep(0.25)
    if progress:
        print("  brokers registered; warming up coordinators ...", file=sys.stderr)
    # The first group and transaction requests create __consumer_offsets and __transaction_state.
    # Doing that here means callers never meet "coordinator load in progress" (and a librdkafka
    # assignment stall that follows a NOT_COORDINATOR answer on a brand-new cluster).
    consumer = Consumer({"bootstrap.servers": state.bootstrap, "group.id": "cv-queue-broker-warmup", **quiet})
    try:
        while True:
            try:
                consumer.committed([TopicPartition("__cvq_warmup", 0)], timeout=5)
                break
            except KafkaException:  # NOT_COORDINATOR / load in progress while __consumer_offsets is born
                if time.monotonic() > deadline:
                    raise
                check_alive()
                time.sleep(0.25)
    finally:
        consumer.close()
    check_alive()
    producer = Producer({"bootstrap.servers": state.bootstrap, "transactional.id": "cv-queue-broker-warmup",
                         **quiet})
    producer.init_transactions(max(5.0, deadline - time.monotonic()))
    producer.flush(1)


def _silent_logger() -> object:
    import logging

    logger = logging.getLogger("cv_queue.broker.warmup")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def start_cluster(
    nodes: int = 1,
    port: int = DEFAULT_PORT,
    data_dir: Path | None = None,
    state_file: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
    progress: bool = True,
) -> BrokerState:
    """Format and start `nodes` combined broker/controller JVMs and wait until they serve clients."""
    if nodes not in (1, 3):
        raise BrokerError(f"--nodes must be 1 or 3, not {nodes}.", "a KRaft quorum here is 1 or 3 voters.")
    state_file = state_file or default_state_file()
    existing = read_state(state_file)
    if existing is not None:
        alive = [n for n in existing.nodes if node_process(n) is not None]
        if alive:
            raise BrokerError(
                f"A local broker is already running at {existing.bootstrap} "
                f"(pids {', '.join(str(n.pid) for n in alive)}; state {state_file}).",
                "use it, or run `cv-queue broker stop` first.",
            )
        if existing.ephemeral:  # stale: every process it names is gone; so is the need for its data
            shutil.rmtree(existing.data_root, ignore_errors=True)
        state_file.unlink()
    java = require_java()
    libs = fetch_kafka(KAFKA_VERSION, quiet=not progress)
    data_root, ephemeral = _prepare_data_root(data_dir)
    layout = plan_nodes(nodes, port, data_root)
    try:
        for node in layout:
            _check_port_free(node.client_port)
            _check_port_free(node.controller_port)
        cluster_id = next((cid for n in layout if (cid := _existing_cluster_id(n))), None) or new_cluster_id()
        state = _launch(java, libs, layout, cluster_id, data_root, ephemeral, state_file, progress)
    except BaseException:
        # Some nodes may already run (the state file names them): stop them before deleting their data.
        if read_state(state_file) is not None:
            stop_cluster(state_file, timeout_s=5, progress=False)
        elif ephemeral:
            shutil.rmtree(data_root, ignore_errors=True)
        raise
    try:
        _wait_ready(state, timeout_s, progress)
    except BaseException:
        stop_cluster(state_file, timeout_s=5, progress=False)
        raise
    return state


def _launch(
    java: Path,
    libs: Path,
    layout: list[NodeLayout],
    cluster_id: str,
    data_root: Path,
    ephemeral: bool,
    state_file: Path,
    progress: bool,
) -> BrokerState:
    package = resources.files("cv_queue.broker")
    conf_dir = data_root / "conf"
    conf_dir.mkdir(exist_ok=True)
    tools_log = conf_dir / "log4j2-tools.properties"
    broker_log = conf_dir / "log4j2-broker.properties"
    tools_log.write_text(package.joinpath("log4j2-tools.properties").read_text())
    broker_log.write_text(package.joinpath("log4j2-broker.properties").read_text())
    node_states: list[NodeState] = []
    for node in layout:
        props = conf_dir / f"server-{node.node_id}.properties"
        props.write_text(render_server_properties(node, layout))
        if _existing_cluster_id(node) is None:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            _format_storage(java, libs, tools_log, props, cluster_id)
        node_states.append(
            NodeState(
                node_id=node.node_id, pid=0, client_port=node.client_port,
                controller_port=node.controller_port, data_dir=str(node.data_dir),
                log_file=str(data_root / f"node-{node.node_id}.log"), properties_file=str(props),
            )
        )
    state = BrokerState(
        kafka_version=KAFKA_VERSION, cluster_id=cluster_id,
        bootstrap=",".join(n.bootstrap for n in layout), data_root=str(data_root), ephemeral=ephemeral,
        started_at=datetime.now(UTC), nodes=node_states,
    )
    heap = _heap_flags(len(layout))
    for node_state in state.nodes:
        node_state.pid = _launch_node(java, libs, broker_log, node_state, heap)
        # Written after every launch so a Ctrl-C half-way still leaves a state file `stop` can use.
        _write_state(state_file, state)
    if progress:
        print(f"started Kafka {KAFKA_VERSION} node(s) {[n.pid for n in state.nodes]}; waiting ...",
              file=sys.stderr)
    return state


def _terminate(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """SIGTERM, wait, then SIGKILL what is left; returns the processes that had to be killed."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    return alive


def stop_node(state: BrokerState, node_id: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop one node of a running cluster (used to show that acks=all survives a lost replica)."""
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
