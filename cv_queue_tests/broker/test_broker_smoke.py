"""Smoke tests on the real broker: topic configs, transactions, and a 3-node cluster losing a node (SIGKILL)
and getting it back from `cv-queue broker start`."""

import subprocess
import time

import psutil
import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from cv_queue.broker.cluster import kill_node, node_process, read_state
from cv_queue.settings import QueueSettings
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.support import free_port_block, read_topic, unique

SEED_CONFIG = dict(QueueSettings().topics.main_config)


def test_seed_topic_configs_read_back(conn):
    admin = AdminClient(conn.client_config())
    name = unique("seed-")
    admin.create_topics([NewTopic(name, num_partitions=8, replication_factor=1, config=SEED_CONFIG)])[name].result()
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)])
    entries = next(iter(described.values())).result()
    live = {key: entries[key].value for key in SEED_CONFIG}
    assert live == SEED_CONFIG
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 8


def test_aborted_transaction_stays_invisible_to_read_committed(conn):
    admin = AdminClient(conn.client_config())
    topic = unique("txn-")
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    producer = Producer({**conn.client_config(), "transactional.id": unique("smoke-txn-")})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"committed-{i}".encode())
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"aborted-{i}".encode())
    producer.flush(30)  # the aborted records really reach the log before the abort
    producer.abort_transaction(30)

    committed = [m.value().decode() for m in read_topic(conn, topic, idle_s=1.5)]
    assert committed == [f"committed-{i}" for i in range(5)]

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    raw = Consumer({**conn.client_config(), "group.id": unique("raw-"), "isolation.level": "read_uncommitted"})
    raw.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen = []
    deadline = time.monotonic() + 15
    while len(seen) < 10 and time.monotonic() < deadline:
        seen += [m.value().decode() for m in raw.consume(100, 0.5) if m.error() is None]
    raw.close()
    # read_uncommitted does see the aborted records: they were written, and only isolation hides them
    assert sorted(seen) == sorted([f"committed-{i}" for i in range(5)] + [f"aborted-{i}" for i in range(5)])


@pytest.mark.cluster
def test_three_nodes_survive_a_killed_node_and_broker_start_restarts_it(tmp_path):
    state_file = tmp_path / "state.json"
    port = free_port_block(width=3)
    started = subprocess.run([CV_QUEUE, "broker", "start", "--nodes", "3", "--port", str(port),
                              "--state-file", str(state_file)], capture_output=True, text=True, timeout=240)
    assert started.returncode == 0, started.stderr
    state = read_state(state_file)
    assert state is not None and len(state.nodes) == 3
    bootstrap = started.stdout.strip().splitlines()[-1]
    assert bootstrap == state.bootstrap
    pids = [n.pid for n in state.nodes]
    try:
        status = subprocess.run([CV_QUEUE, "broker", "status", "--state-file", str(state_file)],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and status.stdout.count("running") == 3, status.stdout

        admin = AdminClient({"bootstrap.servers": bootstrap})
        durable, strict = unique("rf3-"), unique("rf3-strict-")
        admin.create_topics([
            NewTopic(durable, num_partitions=3, replication_factor=3, config={"min.insync.replicas": "2"}),
            NewTopic(strict, num_partitions=1, replication_factor=3, config={"min.insync.replicas": "3"}),
        ])[durable].result()
        time.sleep(1)  # let every replica join the ISR before a node is taken away

        kill_node(state_file, 2)  # node 3 crashes
        assert node_process(state.nodes[2]) is None

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                             "message.timeout.ms": 60000})
        errors = []
        for i in range(30):
            producer.produce(durable, key=str(i).encode(), value=b"v",
                             on_delivery=lambda err, msg: errors.append(err) if err else None)
        assert producer.flush(60) == 0
        assert errors == []  # 2 of 3 replicas in sync satisfies min.insync.replicas=2

        # The same produce must fail where min.insync.replicas=3 cannot be met: acks=all is really enforced.
        strict_producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0,
                                    "message.timeout.ms": 10000})
        failures = []
        strict_producer.produce(strict, value=b"v", on_delivery=lambda err, msg: failures.append(err))
        strict_producer.flush(20)
        assert len(failures) == 1 and failures[0] is not None
        assert "NOT_ENOUGH_REPLICAS" in failures[0].name()

        # `broker start` on the recorded cluster restarts only the dead node, on its ports and data.
        restarted = subprocess.run([CV_QUEUE, "broker", "start", "--state-file", str(state_file)],
                                   capture_output=True, text=True, timeout=240)
        assert restarted.returncode == 0, restarted.stderr
        assert "restarting node(s) [3]" in restarted.stderr
        assert restarted.stdout.strip().splitlines()[-1] == bootstrap
        after = read_state(state_file)
        assert after is not None
        assert [n.pid for n in after.nodes][:2] == pids[:2] and after.nodes[2].pid != pids[2]
        pids.append(after.nodes[2].pid)
        status = subprocess.run([CV_QUEUE, "broker", "status", "--state-file", str(state_file)],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and status.stdout.count("running") == 3, status.stdout

        # The cluster is whole again: min.insync.replicas=3 with acks=all is met.
        delivered = []
        strict_producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 60000})
        strict_producer.produce(strict, value=b"after-restart", on_delivery=lambda err, msg: delivered.append(err))
        assert strict_producer.flush(90) == 0
        assert delivered == [None]

        # All alive: start says it is running and changes nothing.
        again = subprocess.run([CV_QUEUE, "broker", "start", "--state-file", str(state_file)],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 2 and "already running" in again.stderr
        assert [n.pid for n in read_state(state_file).nodes] == [n.pid for n in after.nodes]
    finally:
        stopped = subprocess.run([CV_QUEUE, "broker", "stop", "--state-file", str(state_file)],
                                 capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(psutil.pid_exists(pid) and "kafka.Kafka" in " ".join(_cmdline(pid)) for pid in pids)
    assert not state_file.exists()
    import os

    assert not os.path.exists(state.data_root), "ephemeral data left behind"


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_kafka_exception_type_is_what_the_code_catches():
    # The worker and provisioning code unwrap KafkaException.args[0] as a KafkaError; pin that contract.
    from confluent_kafka import KafkaError

    exc = KafkaException(KafkaError(KafkaError._FENCED))
    assert exc.args[0].code() == KafkaError._FENCED
