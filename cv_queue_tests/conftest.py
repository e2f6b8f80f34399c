"""Fixtures: a real Kafka broker for the whole session (or KAFKA_BOOTSTRAP_SERVERS), a 3-node cluster on
demand, and unique names per test. A broker that cannot start fails the run: nothing is skipped."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cv_queue.broker.cluster import start_cluster, stop_cluster
from cv_queue.kafka.clients import admin_client
from cv_queue.kafka.topics import provision, topic_specs
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.support import free_port_block, unique

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CV_QUEUE = str(Path(sys.executable).parent / "cv-queue")


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker under test. Exported as KAFKA_BOOTSTRAP_SERVERS so subprocesses (CLI, Dagster) use it."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    state_file = tmp_path_factory.mktemp("broker") / "state.json"
    state = start_cluster(1, free_port_block(width=1), state_file=state_file, progress=False)
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = state.bootstrap
    try:
        yield state.bootstrap
    finally:
        os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        stop_cluster(state_file, progress=False)


@pytest.fixture
def conn(bootstrap: str) -> KafkaConnection:
    return KafkaConnection(bootstrap_servers=bootstrap)


@pytest.fixture
def namespace() -> str:
    return unique("t")


@pytest.fixture
def settings(namespace: str) -> QueueSettings:
    """Defaults, in a namespace of this test's own (topics, groups and transactional ids)."""
    return QueueSettings(namespace=namespace)


@pytest.fixture
def provisioned(conn: KafkaConnection, settings: QueueSettings) -> QueueSettings:
    provision(admin_client(conn), topic_specs(settings))
    return settings
