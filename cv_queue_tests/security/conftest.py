"""Fixtures of the security tests: a secured broker (SASL_SSL, SCRAM-SHA-512, StandardAuthorizer), started once per
session as `cv-queue broker start --security sasl_ssl` does, and namespaces provisioned and granted by the admin.

`secure_cluster` gives `.bootstrap`, `.ca_path`, `.passwords` (principal -> password) and `.connection(principal)`;
`.env(principal)` is the environment of a subprocess logged in as that principal. It never touches os.environ, so
the plaintext session broker of the other tests is unaffected.
"""

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cv_queue.broker.cluster import start_cluster, stop_cluster
from cv_queue.broker.security import SecurityMode, security_of
from cv_queue.kafka.admin.acls import ADMIN
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.support import free_port_block, unique


@dataclass(frozen=True)
class SecureCluster:
    bootstrap: str
    ca_path: Path
    passwords: dict[str, str]
    state_file: Path

    def connection(self, principal: str) -> KafkaConnection:
        return KafkaConnection(bootstrap_servers=self.bootstrap, security_protocol="SASL_SSL",
                               sasl_mechanism="SCRAM-SHA-512", sasl_username=principal,
                               sasl_password=self.passwords[principal], ssl_ca_location=str(self.ca_path))

    def env(self, principal: str, **overrides: str) -> dict[str, str]:
        """os.environ plus the KAFKA_* settings of `principal` (its password included), then `overrides`."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": principal,
            "KAFKA_SASL_PASSWORD": self.passwords[principal],
            "KAFKA_SSL_CA_LOCATION": str(self.ca_path),
            **overrides,
        }


@pytest.fixture(scope="session")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    """One secured single-node broker on free ports for the session; stopped (and its data removed) at the end."""
    state_file = tmp_path_factory.mktemp("secure-broker") / "state.json"
    try:
        state = start_cluster(1, free_port_block(width=1), state_file=state_file, progress=False,
                              security=SecurityMode.SASL_SSL)
        security = security_of(state)
        yield SecureCluster(state.bootstrap, security.tls.ca, dict(security.credentials), state_file)
    finally:
        stop_cluster(state_file, progress=False)


def apply_acls_as_admin(cluster: SecureCluster, namespace: str) -> subprocess.CompletedProcess:
    """`cv-queue acls apply` for `namespace`, logged in as cvq-admin; fails the test unless it succeeds."""
    proc = subprocess.run([CV_QUEUE, "acls", "apply"], env=cluster.env(ADMIN, CVQ_NAMESPACE=namespace),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"acls apply failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def secure_settings(secure_cluster: SecureCluster) -> QueueSettings:
    """A namespace of this test's own on the secured broker: topics provisioned and ACLs applied by cvq-admin."""
    settings = QueueSettings(namespace=unique("s"))
    provision(admin_client(secure_cluster.connection(ADMIN)), topic_specs(settings))
    apply_acls_as_admin(secure_cluster, settings.namespace)
    return settings
