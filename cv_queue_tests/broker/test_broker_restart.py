"""`cv-queue broker start` right after a stop or a crash: at once, on the same port and data dir, data kept.

Both tests first make sure the server port really holds TIME_WAIT sockets (clients were connected when the
broker went away), which is what made a plain bind, and so the old port check, refuse for about a minute.
"""

import socket
import subprocess
import time

import psutil
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cv_queue.broker.cluster import kill_cluster, kill_node, node_process, read_state, start_cluster
from cv_queue.broker.errors import BrokerError
from cv_queue.broker.launch import check_port_free, existing_cluster_id
from cv_queue.settings import KafkaConnection
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.support import free_port_block, read_topic, unique, wait_for


def _broker(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([CV_QUEUE, "broker", *args], capture_output=True, text=True, timeout=timeout)


def _time_wait_on(port: int) -> bool:
    # "tcp" covers tcp6 too: the JVM listens on an IPv6 socket (::ffff:127.0.0.1).
    return any(c.status == psutil.CONN_TIME_WAIT and c.laddr.port == port for c in psutil.net_connections("tcp"))


def _plain_bind_refused(port: int) -> bool:
    """What the old port check did: bind without SO_REUSEADDR."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _await_time_wait(port: int) -> None:
    # The client sees the server's FIN, closes its end, and the server's end then sits in TIME_WAIT.
    wait_for(lambda: _time_wait_on(port), 30, f"TIME_WAIT sockets on 127.0.0.1:{port}")
    assert _plain_bind_refused(port), "precondition: TIME_WAIT makes a plain bind refuse the port"


def _topic_with_records(bootstrap: str, count: int) -> tuple[str, Producer]:
    """A topic holding `count` acknowledged records, and the producer that wrote them (still connected)."""
    topic = unique("keep-")
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept referenced until the future resolves
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(count):
        producer.produce(topic, key=str(i).encode(), value=f"before-{i}".encode())
    assert producer.flush(30) == 0
    return topic, producer


def _assert_serves(bootstrap: str, topic: str, count: int) -> None:
    records = read_topic(KafkaConnection(bootstrap_servers=bootstrap), topic, expect=count, timeout_s=60)
    assert [m.value().decode() for m in records] == [f"before-{i}" for i in range(count)]


def test_port_check_ignores_time_wait_but_not_a_listener():
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first, so the server's port keeps the TIME_WAIT
        time.sleep(0.2)
        client.close()
        with pytest.raises(BrokerError, match="already in use"):
            check_port_free(port)  # still listening
    _await_time_wait(port)
    check_port_free(port)  # only TIME_WAIT is left: free for a server socket


def test_start_again_at_once_after_a_stop(tmp_path):
    port, data_dir, state_file = free_port_block(width=1), tmp_path / "data", tmp_path / "state.json"
    args = ["--port", str(port), "--data-dir", str(data_dir), "--state-file", str(state_file)]
    first = _broker("start", *args)
    assert first.returncode == 0, first.stderr
    bootstrap = first.stdout.strip().splitlines()[-1]
    try:
        topic, producer = _topic_with_records(bootstrap, 10)
        stopped = _broker("stop", "--state-file", str(state_file), timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        _await_time_wait(port)
        del producer
        again = _broker("start", *args)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1] == bootstrap
        _assert_serves(bootstrap, topic, 10)
    finally:
        _broker("stop", "--state-file", str(state_file), timeout=120)


def test_start_again_at_once_after_sigkill_keeps_the_data(tmp_path):
    port, data_dir, state_file = free_port_block(width=1), tmp_path / "data", tmp_path / "state.json"
    args = ["--port", str(port), "--data-dir", str(data_dir), "--state-file", str(state_file)]
    first = _broker("start", *args)
    assert first.returncode == 0, first.stderr
    bootstrap = first.stdout.strip().splitlines()[-1]
    before = read_state(state_file)
    assert before is not None
    try:
        topic, producer = _topic_with_records(bootstrap, 10)
        killed = kill_node(state_file, 0)
        assert node_process(killed) is None
        _await_time_wait(port)
        del producer
        dead = _broker("status", "--state-file", str(state_file))
        assert dead.returncode == 1 and "dead" in dead.stdout

        again = _broker("start", *args)
        assert again.returncode == 0, again.stderr
        assert "restarting node(s) [1]" in again.stderr
        after = read_state(state_file)
        assert after is not None and after.nodes[0].pid != before.nodes[0].pid
        assert node_process(after.nodes[0]) is not None
        # Not reformatted: the node still belongs to the cluster it was formatted for.
        assert existing_cluster_id(data_dir / "node-1") == before.cluster_id == after.cluster_id
        _assert_serves(bootstrap, topic, 10)

        # The Python API the chaos tests use: the whole cluster SIGKILLed, start_cluster again at once.
        kill_cluster(state_file)
        restarted = start_cluster(1, port, data_dir, state_file, progress=False)
        assert restarted.nodes[0].pid != after.nodes[0].pid and restarted.cluster_id == before.cluster_id
        _assert_serves(bootstrap, topic, 10)
    finally:
        _broker("stop", "--state-file", str(state_file), timeout=120)
    assert not state_file.exists()
