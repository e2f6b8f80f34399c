"""A wrong password, an unknown user, a wrong CA and an expired certificate each end `cv-queue worker`, `enqueue`,
`topics provision` and `dlq replay` within 30 s, with exit code 6 and a message naming the cause and the setting
to fix, and never the password. A principal without an ACL gets exit code 7 naming what was denied."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cv_queue.broker.cluster import start_cluster, stop_cluster
from cv_queue.broker.security import OwnTls, SecurityMode, security_of
from cv_queue.broker.tls import generate_tls
from cv_queue.kafka.admin.acls import ADMIN, PRODUCER, WORKER, acl_rules, apply_acls
from cv_queue.kafka.admin.names import layout_topic, presence_group
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.auth import EXIT_AUTH, EXIT_DENIED
from cv_queue.kafka.client.clients import admin_client
from cv_queue.settings import QueueSettings
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.security.conftest import SecureCluster
from cv_queue_tests.support import free_port_block, unique

LIMIT_S = 30.0
COMMANDS = {
    "worker": ["worker", "--partitions", "0,1"],
    "enqueue": ["enqueue", "--count", "3"],
    "topics provision": ["topics", "provision"],
    "dlq replay": ["dlq", "replay"],
}


def _run_all(env: dict[str, str]) -> dict[str, tuple[int, str, float]]:
    """Every command at once (the box has 2 cores; each mostly waits), each killed if it outlives the limit."""
    started = time.monotonic()
    procs = {name: subprocess.Popen([CV_QUEUE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
             for name, args in COMMANDS.items()}
    out: dict[str, tuple[int, str, float]] = {}
    try:
        for name, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=max(1.0, started + LIMIT_S + 15 - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            out[name] = (proc.returncode, stdout + stderr, time.monotonic() - started)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def _assert_each(results: dict[str, tuple[int, str, float]], code: int, *fragments: str, secret: str) -> None:
    for name, (returncode, output, seconds) in results.items():
        assert returncode == code, f"`cv-queue {name}` exited {returncode}, not {code}:\n{output[-3000:]}"
        assert seconds < LIMIT_S, f"`cv-queue {name}` took {seconds:.1f}s"
        for fragment in fragments:
            assert fragment in output, f"`cv-queue {name}` did not say {fragment!r}:\n{output[-3000:]}"
        assert secret not in output, f"`cv-queue {name}` printed a password"


@pytest.fixture(scope="module")
def expired_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    """A second secured broker whose (operator-supplied) server certificate expired yesterday."""
    tls_dir = tmp_path_factory.mktemp("expired-tls")
    files = generate_tls(tls_dir, expired=True)
    key = tls_dir / "server-key.pem"
    key.write_bytes(files.keystore.read_bytes().split(b"-----END PRIVATE KEY-----")[0] + b"-----END PRIVATE KEY-----\n")
    state_file = tmp_path_factory.mktemp("expired-broker") / "state.json"
    try:
        state = start_cluster(1, free_port_block(width=1), state_file=state_file, progress=False,
                              security=SecurityMode.SASL_SSL, own_tls=OwnTls(files.ca, files.certificate, key))
        security = security_of(state)
        yield SecureCluster(state.bootstrap, security.tls.ca, dict(security.credentials), state_file)
    finally:
        stop_cluster(state_file, progress=False)


def test_a_wrong_password_ends_every_command_with_code_6(secure_cluster):
    wrong = "not-the-password-" + unique()
    results = _run_all(secure_cluster.env(WORKER, KAFKA_SASL_PASSWORD=wrong, CVQ_NAMESPACE=unique("e")))
    _assert_each(results, EXIT_AUTH, "wrong password or an unknown user", "KAFKA_SASL_PASSWORD", secret=wrong)


def test_an_unknown_user_ends_every_command_with_code_6(secure_cluster):
    results = _run_all(secure_cluster.env(WORKER, KAFKA_SASL_USERNAME="cvq-nobody", CVQ_NAMESPACE=unique("e")))
    _assert_each(results, EXIT_AUTH, "'cvq-nobody'", "KAFKA_SASL_USERNAME", secret=secure_cluster.passwords[WORKER])


def test_a_wrong_ca_ends_every_command_with_code_6(secure_cluster, tmp_path: Path):
    other_ca = generate_tls(tmp_path / "other").ca
    results = _run_all(secure_cluster.env(WORKER, KAFKA_SSL_CA_LOCATION=str(other_ca), CVQ_NAMESPACE=unique("e")))
    _assert_each(results, EXIT_AUTH, "was not issued by a CA in", "KAFKA_SSL_CA_LOCATION",
                 secret=secure_cluster.passwords[WORKER])


def test_an_expired_certificate_ends_every_command_with_code_6(expired_cluster):
    results = _run_all(expired_cluster.env(WORKER, CVQ_NAMESPACE=unique("e")))
    _assert_each(results, EXIT_AUTH, "certificate expired on", secret=expired_cluster.passwords[WORKER])


def test_a_missing_acl_names_the_operation_and_resource(secure_cluster, secure_settings):
    """cvq-producer may write the main topic only: provisioning and running a worker are denied, by name."""
    env = secure_cluster.env(PRODUCER, CVQ_NAMESPACE=secure_settings.namespace)
    names = secure_settings.topic_names
    provision = subprocess.run([CV_QUEUE, "topics", "provision"], env=env, capture_output=True, text=True,
                               timeout=60, check=False)
    assert provision.returncode == EXIT_DENIED, provision.stderr
    # Denied at its first step, by name: the DLQ layout record (checked before any topic changes), or a topic.
    assert "User:cvq-producer" in provision.stderr and f"'{secure_settings.namespace}." in provision.stderr
    worker = subprocess.run([CV_QUEUE, "worker", "--partitions", "0,1"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert worker.returncode == EXIT_DENIED, worker.stderr[-3000:]
    assert "may not DESCRIBE on TOPIC" in worker.stderr and names.retry in worker.stderr
    assert secure_cluster.passwords[PRODUCER] not in provision.stderr + worker.stderr
    assert secure_cluster.passwords[ADMIN] not in provision.stderr + worker.stderr


def test_a_worker_denied_the_layout_topic_exits_7_naming_it(secure_cluster):
    """Every ACL but the layout topic's: the worker's first start cannot create or read the layout record, and
    says so as an authorization failure (exit 7, the topic named), not as a layout error."""
    settings = QueueSettings(namespace=unique("s"))
    layout = layout_topic(settings)
    admin = admin_client(secure_cluster.connection(ADMIN))
    provision(admin, topic_specs(settings))
    apply_acls(admin, [rule for rule in acl_rules(settings) if rule.name != layout])
    worker = subprocess.run([CV_QUEUE, "worker", "--partitions", "0,1"],
                            env=secure_cluster.env(WORKER, CVQ_NAMESPACE=settings.namespace),
                            capture_output=True, text=True, timeout=120, check=False)
    assert worker.returncode == EXIT_DENIED, worker.stderr[-3000:]
    assert f"User:{WORKER} may not" in worker.stderr and f"TOPIC {layout!r}" in worker.stderr, worker.stderr[-3000:]
    assert secure_cluster.passwords[WORKER] not in worker.stderr


def test_tls_settings_pointed_at_a_plaintext_listener_end_every_command_with_code_6(secure_cluster, bootstrap):
    """The commonest TLS mistake: librdkafka only sees the connection drop ("SSL handshake failed: Disconnected"),
    the same words as a broker restarting; reading the listener itself tells them apart."""
    env = secure_cluster.env(WORKER, CVQ_NAMESPACE=unique("e"), KAFKA_BOOTSTRAP_SERVERS=bootstrap)
    results = _run_all(env)
    _assert_each(results, EXIT_AUTH, "TLS handshake", "KAFKA_SECURITY_PROTOCOL",
                 secret=secure_cluster.passwords[WORKER])


def test_a_worker_denied_the_presence_group_exits_7_naming_it_at_once(secure_cluster):
    """Every ACL but the presence group's: the worker cannot be seen alive by a re-layout, so it refuses to start,
    by name and within the limit, instead of waiting out the join."""
    settings = QueueSettings(namespace=unique("s"))
    group = presence_group(settings)
    admin = admin_client(secure_cluster.connection(ADMIN))
    provision(admin, topic_specs(settings))
    apply_acls(admin, [rule for rule in acl_rules(settings) if rule.name != group])
    started = time.monotonic()
    worker = subprocess.run([CV_QUEUE, "worker", "--partitions", "0,1"],
                            env=secure_cluster.env(WORKER, CVQ_NAMESPACE=settings.namespace),
                            capture_output=True, text=True, timeout=120, check=False)
    assert worker.returncode == EXIT_DENIED, worker.stderr[-3000:]
    assert time.monotonic() - started < LIMIT_S
    assert f"User:{WORKER} may not" in worker.stderr and group in worker.stderr, worker.stderr[-3000:]
