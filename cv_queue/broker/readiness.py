"""Waiting until a started (or restarted) cluster is whole: every node serves, replicas are in sync, and the
group and transaction coordinators answer."""

import logging
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from cv_queue.broker.errors import BrokerError
from cv_queue.broker.launch import log_tail
from cv_queue.broker.scram import ADMIN
from cv_queue.broker.security import SecurityMode, security_of
from cv_queue.broker.state import BrokerState, NodeState, node_process

_POLL_S = 0.5


def _probe_config(state: BrokerState) -> dict:
    """Client properties of the readiness probes: quiet, and logged in as the admin on a secured cluster.

    The probes do not verify the broker's certificate: they talk to the JVMs this process just launched on
    127.0.0.1, and a certificate clients will refuse (an operator's expired one, a drill) must not keep the broker
    from starting; `broker start` reports such a certificate instead.
    """
    logger = logging.getLogger("cv_queue.broker.warmup")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    conf: dict = {"log_level": 0, "logger": logger}
    if state.security == SecurityMode.SASL_SSL:
        conf.update(security_of(state).client_config(ADMIN))
        conf["enable.ssl.certificate.verification"] = False
    return conf


def _check_alive(state: BrokerState) -> None:
    for node in state.nodes:
        if node_process(node) is None:
            raise BrokerError(
                f"Kafka node {node.node_id} exited during start-up. Last log lines "
                f"({node.log_file}):\n{log_tail(Path(node.log_file))}",
                "read the log above; a port conflict or a corrupt data dir are the usual causes.",
            )


def _node_sees_cluster(node: NodeState, size: int, probe: dict) -> bool:
    """Whether the node itself answers and lists every broker (itself included, i.e. it is unfenced).

    A fresh client knows only this one address, so its first metadata request goes to this node; a
    client on the whole bootstrap could be answered by a survivor that still lists a killed node's
    old registration.
    """
    admin = AdminClient({**probe, "bootstrap.servers": node.bootstrap})
    try:
        return len(admin.list_topics(timeout=2).brokers) == size
    except KafkaException:
        return False


def _out_of_sync(admin: AdminClient) -> list[str]:
    """Partitions whose in-sync replicas are fewer than their replicas (a restarted node still catching up)."""
    try:
        metadata = admin.list_topics(timeout=5)
    except KafkaException:
        return ["(metadata unavailable)"]
    return [f"{name}-{pid}" for name, topic in metadata.topics.items() for pid, part in topic.partitions.items()
            if set(part.isrs) != set(part.replicas)]


def _deadline_error(what: str, state: BrokerState, timeout_s: float) -> BrokerError:
    return BrokerError(f"Kafka did not {what} within {timeout_s:.0f}s.",
                       f"see the node logs under {Path(state.nodes[0].log_file).parent}.")


def wait_ready(state: BrokerState, timeout_s: float, progress: bool) -> None:
    """Block until the cluster is whole, or raise BrokerError (with the log tail of a node that died)."""
    deadline = time.monotonic() + timeout_s
    probe = _probe_config(state)
    pending = list(state.nodes)
    while pending:
        _check_alive(state)
        pending = [node for node in pending if not _node_sees_cluster(node, len(state.nodes), probe)]
        if pending and time.monotonic() > deadline:
            raise _deadline_error(f"register {len(state.nodes)} broker(s) (node(s) "
                                  f"{[n.node_id for n in pending]} not ready)", state, timeout_s)
        if pending:
            time.sleep(_POLL_S)
    admin = AdminClient({**probe, "bootstrap.servers": state.bootstrap})
    while lagging := _out_of_sync(admin):
        _check_alive(state)
        if time.monotonic() > deadline:
            raise _deadline_error(f"bring every replica back in sync ({', '.join(lagging[:5])} lag)", state,
                                  timeout_s)
        time.sleep(_POLL_S)
    if progress:
        print("  brokers registered; warming up coordinators ...", file=sys.stderr)
    _warm_coordinators(state, deadline, probe)


def _warm_coordinators(state: BrokerState, deadline: float, probe: dict) -> None:
    # The first group and transaction requests create __consumer_offsets and __transaction_state.
    # Doing that here means callers never meet "coordinator load in progress" (and a librdkafka
    # assignment stall that follows a NOT_COORDINATOR answer on a brand-new cluster).
    consumer = Consumer({**probe, "bootstrap.servers": state.bootstrap, "group.id": "cv-queue-broker-warmup"})
    try:
        while True:
            try:
                consumer.committed([TopicPartition("__cvq_warmup", 0)], timeout=5)
                break
            except KafkaException:  # NOT_COORDINATOR / load in progress while __consumer_offsets is born
                if time.monotonic() > deadline:
                    raise
                _check_alive(state)
                time.sleep(0.25)
    finally:
        consumer.close()
    _check_alive(state)
    producer = Producer({**probe, "bootstrap.servers": state.bootstrap, "transactional.id": "cv-queue-broker-warmup"})
    producer.init_transactions(max(5.0, deadline - time.monotonic()))
    producer.flush(1)
