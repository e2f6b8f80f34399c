"""Fixtures: a real Kafka broker for the whole session (or KAFKA_BOOTSTRAP_SERVERS), a 3-node cluster on
demand, and unique names per test. A broker that cannot start fails the run: nothing is skipped."""

import ast
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from cv_queue.broker.cluster import start_cluster, stop_cluster
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.support import free_port_block, unique

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# No per-example deadline: the suite runs beside brokers, Dagster and other tests on a shared 2-core machine, where
# one example of a few milliseconds can take half a second; a property is judged by what it checks, not its speed.
# 60 examples where a test sets none (hypothesis' default is 100): the suite's CPU is the bound on `make test`'s
# 20 minutes, and the state machines, which set their own counts, keep theirs.
hypothesis_settings.register_profile("cv-queue", deadline=None, max_examples=60)
hypothesis_settings.load_profile("cv-queue")
CV_QUEUE = str(Path(sys.executable).parent / "cv-queue")

# CPython 3.11 keeps the AST converter's recursion depth in per-interpreter state shared by every thread (see CPython
# gh-106905): two threads in ast.parse at once can raise "SystemError: AST constructor recursion depth mismatch". It
# failed one run as hypothesis read a test's source while a thread left by an earlier test in the same process
# parsed too. The test process serializes ast.parse (the product never parses code at run time).
if sys.version_info < (3, 12):
    _AST_LOCK = threading.RLock()
    _parse = ast.parse

    def _serialized_parse(*args: object, **kwargs: object) -> ast.AST:
        with _AST_LOCK:
            return _parse(*args, **kwargs)  # type: ignore[arg-type]

    ast.parse = _serialized_parse  # type: ignore[assignment]


def pytest_configure(config: pytest.Config) -> None:
    """`make test` may itself run as a background job of a non-interactive shell, which starts with SIGINT ignored,
    and every process the tests start would inherit that: Dagster's own daemon and webserver, which the fixtures stop
    with SIGINT, would then only die by SIGKILL a minute later. A handler (not an ignore) is reset to the default on
    exec, so children start as from a terminal. The tests of our own commands' stop paths start them with SIGINT
    ignored on purpose (stress.py)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


#: Tests that run a Dagster daemon or webserver (marker `daemon`) are the heaviest: each starts several Python
#: processes that import Dagster. Under `pytest -n 3 --dist loadgroup` (make test) they keep to two groups, each
#: run one test at a time by one xdist worker, so at most two run at once on this 2-core machine while the third
#: worker takes the light tests. The groups are cut by folder, about equal in time (seconds measured in one run):
#: deploy (production instance ~175), cli (dev stop ~145) and security (~80) in one; defs (~140), e2e (~90) and ui
#: (~125) in the other. Every security test goes with the daemon ones of its folder: the secured broker is a
#: session fixture, started once per xdist worker that needs it (a JVM, TLS and SASL: 30-50 s of CPU). The 3-node
#: cluster tests keep to one group of their own. Nothing fixed is shared between groups: every test has its own
#: namespace, Dagster home and ports (a worker run's metrics port, 9400 + slot, is served by whichever run binds it
#: first; another logs that it serves none and works on).
_DAEMON_GROUPS = {"deploy": "daemon-a", "cli": "daemon-a", "security": "daemon-a"}
_DEFAULT_DAEMON_GROUP = "daemon-b"
_WHOLE_FOLDER_GROUPS = {"security": "daemon-a"}


def _xdist_group(item: pytest.Item) -> str | None:
    folder = Path(str(item.fspath)).relative_to(PROJECT_ROOT / "cv_queue_tests").parts[0]
    if item.get_closest_marker("cluster"):
        return "cluster"
    if folder in _WHOLE_FOLDER_GROUPS:
        return _WHOLE_FOLDER_GROUPS[folder]
    if item.get_closest_marker("daemon"):
        return _DAEMON_GROUPS.get(folder, _DEFAULT_DAEMON_GROUP)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
