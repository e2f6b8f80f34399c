"""The secured broker itself: TLS verified against the generated CA, SCRAM logins, ACLs applied idempotently."""

import os
import stat
import subprocess

from cv_queue.broker.state import read_state
from cv_queue.cli.broker_cmd import print_client_settings
from cv_queue.kafka.admin.acls import ADMIN, PRINCIPALS, WORKER, acl_rules, describe_acls
from cv_queue.kafka.client.clients import admin_client
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.security.conftest import apply_acls_as_admin


def test_every_principal_logs_in_and_the_password_file_is_private(secure_cluster):
    assert set(secure_cluster.passwords) == set(PRINCIPALS)
    for principal in PRINCIPALS:
        metadata = admin_client(secure_cluster.connection(principal)).list_topics(timeout=20)
        assert list(metadata.brokers) == [1]
    state = secure_cluster.state_file.read_text()
    credentials_file = next(line.split('"')[3] for line in state.splitlines() if '"credentials_file"' in line)
    assert stat.S_IMODE(os.stat(credentials_file).st_mode) == 0o600


def test_acls_apply_twice_is_idempotent_and_describe_shows_them(secure_cluster, secure_settings):
    """secure_settings applied them once already: a second apply creates nothing, and describe lists them all."""
    second = apply_acls_as_admin(secure_cluster, secure_settings.namespace)
    needed = acl_rules(secure_settings)
    assert f"0 created, {len(needed)} already present" in second.stdout
    held = set(describe_acls(admin_client(secure_cluster.connection(ADMIN))))
    assert set(needed) <= held
    proc = subprocess.run([CV_QUEUE, "acls", "describe"],
                          env=secure_cluster.env(ADMIN, CVQ_NAMESPACE=secure_settings.namespace),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"{secure_settings.namespace}.cv-queue-worker-" in proc.stdout
    assert "PREFIXED" in proc.stdout


def test_a_connection_never_shows_its_password(secure_cluster):
    conn = secure_cluster.connection(WORKER)
    password = secure_cluster.passwords[WORKER]
    assert password not in repr(conn) and password not in str(conn) and password not in conn.model_dump_json()
    assert conn.client_config()["sasl.password"] == password  # handed to librdkafka only


def test_broker_start_prints_the_client_settings_but_no_password(secure_cluster, capsys):
    print_client_settings(read_state(secure_cluster.state_file))  # what `cv-queue broker start` prints after start
    text = capsys.readouterr().err
    for expected in (f"KAFKA_BOOTSTRAP_SERVERS={secure_cluster.bootstrap}", "KAFKA_SECURITY_PROTOCOL=SASL_SSL",
                     "KAFKA_SASL_MECHANISM=SCRAM-SHA-512", "KAFKA_SASL_USERNAME=", f"KAFKA_SSL_CA_LOCATION="
                     f"{secure_cluster.ca_path}", "scram-credentials.properties"):
        assert expected in text
    assert not any(password in text for password in secure_cluster.passwords.values())
