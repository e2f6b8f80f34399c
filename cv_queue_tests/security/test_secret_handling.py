"""Secrets, without a broker: redaction of client log lines (librdkafka's own debug dump included), credentials per
principal in the Dagster resource, EnvVar-only passwords in every job's config schema (the Launchpad's defaults),
and `cv-queue config` output."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from confluent_kafka import KafkaError, Producer

from cv_queue.defs.resources import SASL_ENV, SECRET_FIELDS, KafkaResource, Principal, default_resources
from cv_queue.kafka.client.client_log import REDACTED, ClientLog, redact

PASSWORDS = {Principal.ADMIN: "admin-pw-7f3a9c", Principal.WORKER: "worker-pw-2b8e41",
             Principal.REPLAYER: "replayer-pw-c95d07"}
KEY_PASSWORD = "key-pw-5e1f88"
CV_QUEUE = str(Path(sys.executable).parent / "cv-queue")


@pytest.fixture
def secured_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_SSL_CA_LOCATION": "/tmp/ca.pem", "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}
    for principal, (user_var, password_var) in SASL_ENV.items():
        env[user_var] = f"cvq-{principal.value}"
        env[password_var] = PASSWORDS[principal]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_redact_removes_sensitive_properties_and_known_values() -> None:
    dump = "CONF [rdkafka#producer-1] [thrd:app]:   sasl.password = s3cret"
    assert redact(dump) == f"CONF [rdkafka#producer-1] [thrd:app]:   sasl.password = {REDACTED}"
    as_dict = str({"sasl.username": "cvq-worker", "sasl.password": "s3 cret", "ssl.key.password": "k3y"})
    assert "s3 cret" not in redact(as_dict) and "k3y" not in redact(as_dict)
    assert "cvq-worker" in redact(as_dict)  # usernames are not secret
    assert redact("broker said s3cret back", frozenset({"s3cret"})) == f"broker said {REDACTED} back"
    assert redact("SASL authentication error: Authentication failed") == \
        "SASL authentication error: Authentication failed"


def test_client_log_redacts_log_lines_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    client_log = ClientLog(logging.getLogger("test.redaction"))
    client_log.add_secret("s3cret-value")
    with caplog.at_level(logging.DEBUG, logger="test.redaction"):
        client_log.log(logging.DEBUG, "CONF [rdkafka#consumer-1]: %s = %s", "ssl.key.password", "k3y")
        client_log.log(logging.WARNING, "FAIL [rdkafka#consumer-1]: echoed s3cret-value")
        client_log.error_cb(KafkaError(KafkaError._AUTHENTICATION, "bad credentials s3cret-value"))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert len(caplog.records) == 3 and "kafka client error" in logged  # the grep below reads real lines
    assert "k3y" not in logged and "s3cret-value" not in logged
    assert logged.count(REDACTED) == 3


def test_librdkafka_debug_dump_reaches_our_log_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """librdkafka's `debug` prints its whole configuration; through our logger the password is redacted."""
    client_log = ClientLog(logging.getLogger("test.rdkafka"))
    with caplog.at_level(logging.DEBUG, logger="test.rdkafka"):
        producer = Producer({"bootstrap.servers": "127.0.0.1:1", "security.protocol": "SASL_PLAINTEXT",
                             "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "cvq-producer",
                             "sasl.password": "debug-pw-91ab2c", "debug": "conf,security,broker",
                             "logger": client_log})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("sasl.password" in r.getMessage() for r in caplog.records):
            producer.poll(0.2)
        producer.flush(0)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sasl.mechanisms = SCRAM-SHA-512" in logged, "the config dump was not captured"
    assert "sasl.password = [redacted]" in logged
    assert "debug-pw-91ab2c" not in logged


def test_each_principal_gets_its_own_credentials_and_falls_back_to_the_admins() -> None:
    kafka = KafkaResource(bootstrap_servers="b:9093", sasl_username="cvq-admin", sasl_password="admin-pw",
                          worker_sasl_username="cvq-worker", worker_sasl_password="worker-pw")
    worker, replayer, admin = (kafka.connection(p) for p in (Principal.WORKER, Principal.REPLAYER, Principal.ADMIN))
    assert (worker.sasl_username, worker.sasl_password.get_secret_value()) == ("cvq-worker", "worker-pw")
    assert (admin.sasl_username, admin.sasl_password.get_secret_value()) == ("cvq-admin", "admin-pw")
    assert (replayer.sasl_username, replayer.sasl_password.get_secret_value()) == ("cvq-admin", "admin-pw")
    assert "worker-pw" not in f"{worker!r} {worker.model_dump()}"  # SecretStr never prints


def test_from_env_passes_every_password_as_an_env_var(secured_env: dict[str, str]) -> None:
    kafka = KafkaResource.from_env()
    for field in SECRET_FIELDS:
        assert isinstance(getattr(kafka, field), dg.EnvVar), field
    assert kafka.worker_sasl_username == "cvq-worker" and kafka.replayer_sasl_username == "cvq-replayer"
    assert kafka.connection(Principal.REPLAYER).sasl_username == "cvq-replayer"


def test_no_password_in_any_jobs_config_schema_or_snapshot(secured_env: dict[str, str]) -> None:
    """The Launchpad's defaults come from the config schema; the stored job snapshot holds it too."""
    from cv_queue.defs.dlq import reprocess_dlq
    from cv_queue.defs.topics import topic_assets
    from cv_queue.defs.workers import partition_worker

    defs = dg.Definitions(assets=topic_assets, jobs=[partition_worker, reprocess_dlq], resources=default_resources())
    job_names = ["partition_worker", "reprocess_dlq", "__ASSET_JOB"]
    snapshots = [dg.serialize_value(defs.resolve_job_def(name).get_job_snapshot()) for name in job_names]
    secrets = [*PASSWORDS.values(), KEY_PASSWORD]
    for name, snapshot in zip(job_names, snapshots, strict=True):
        assert SASL_ENV[Principal.WORKER][1] in snapshot, f"{name}: the grep reads the resource's config"
        assert [s for s in secrets if s in snapshot] == [], name
    kafka_config = defs.resolve_job_def("partition_worker").run_config_schema.config_type.fields["resources"] \
        .config_type.fields["kafka"].default_value_as_json_str
    assert '"worker_sasl_password": {"env": "KAFKA_WORKER_SASL_PASSWORD"}' in kafka_config


def test_cv_queue_config_prints_no_secret(secured_env: dict[str, str]) -> None:
    env = {**secured_env, "CVQ_LLM__API_KEY": "llm-key-44d1e0", "CVQ_ALERTS__WEBHOOK_URL": "https://hook/t0k3n"}
    out = subprocess.run([CV_QUEUE, "config"], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60, check=True)
    printed = out.stdout + out.stderr
    assert "`KAFKA_SASL_PASSWORD`" in printed and "`CVQ_LLM__API_KEY`" in printed
    assert [s for s in [*PASSWORDS.values(), KEY_PASSWORD, "llm-key-44d1e0", "t0k3n"] if s in printed] == []


def test_the_sweep_finds_a_secret_in_files_and_compressed_sqlite_cells(tmp_path: Path) -> None:
    """The secret sweep's own control: a secret it cannot see would make its zero hits meaningless."""
    import sqlite3
    import zlib

    from cv_queue_tests.security.sweep import search_files

    (tmp_path / "run.log").write_text("connected as cvq-worker with sweep-pw-1\n")
    db = sqlite3.connect(tmp_path / "runs.db")
    db.execute("CREATE TABLE snapshots (body BLOB)")
    db.execute("INSERT INTO snapshots VALUES (?)", (zlib.compress(b'{"default": "sweep-pw-2"}'),))
    db.commit()
    db.close()
    hits = search_files(tmp_path, ["sweep-pw-1", "sweep-pw-2", "absent-pw"])
    assert hits.places("sweep-pw-1") == [str(tmp_path / "run.log")]
    assert hits.places("sweep-pw-2") == [f"{tmp_path / 'runs.db'}:snapshots.body"]  # only once decompressed
    assert hits.places("absent-pw") == []
