"""Dagster runs on the secured broker that cannot get in end within 30 s, naming the cause and the variables to fix:
a worker run with a wrong password, topic assets with a wrong admin password, a reprocess_dlq run with an unknown
user (failed at once, not retried for minutes), and a worker run as a principal without the worker's ACLs.
Passwords come from the environment as EnvVar, and the wrong ones appear in no failure message either."""

import time

import dagster as dg
import pytest

from cv_queue.defs.dlq import reprocess_dlq
from cv_queue.defs.resources import KafkaResource, QueueResource
from cv_queue.defs.slots import WORKER_SLOTS
from cv_queue.defs.topics import topic_assets
from cv_queue.defs.workers import partition_worker
from cv_queue.kafka.admin.acls import ADMIN, PRODUCER, REPLAYER, WORKER
from cv_queue_tests.support import unique

DEADLINE_S = 30.0
WRONG = "wrong-pw-6c1d93"


def secured_kafka(cluster, namespace: str, monkeypatch: pytest.MonkeyPatch, **passwords: str) -> KafkaResource:
    """The resource a deployment builds: usernames as values, passwords as EnvVars set in this environment."""
    variables = {"KAFKA_SASL_PASSWORD": passwords.get("admin", cluster.passwords[ADMIN]),
                 "KAFKA_WORKER_SASL_PASSWORD": passwords.get("worker", cluster.passwords[WORKER]),
                 "KAFKA_REPLAYER_SASL_PASSWORD": passwords.get("replayer", cluster.passwords[REPLAYER])}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return KafkaResource(
        bootstrap_servers=cluster.bootstrap, namespace=namespace, security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512", ssl_ca_location=str(cluster.ca_path),
        sasl_username=ADMIN, sasl_password=dg.EnvVar("KAFKA_SASL_PASSWORD"),
        worker_sasl_username=passwords.get("worker_user", WORKER),
        worker_sasl_password=dg.EnvVar("KAFKA_WORKER_SASL_PASSWORD"),
        replayer_sasl_username=passwords.get("replayer_user", REPLAYER),
        replayer_sasl_password=dg.EnvVar("KAFKA_REPLAYER_SASL_PASSWORD"))


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, dict]:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    data = failure.step_failure_data
    return data.error.message, {k: v.value for k, v in (data.user_failure_data.metadata or {}).items()}


def _assert_no_password_in_output_or_event_log(capfd: pytest.CaptureFixture, instance: dg.DagsterInstance,
                                               result: dg.ExecuteInProcessResult, passwords: list[str]) -> None:
    """The run's stdout/stderr and its stored event log hold the failure (so they were read) and no password."""
    captured = capfd.readouterr()
    events = dg.serialize_value(list(instance.all_logs(result.run_id)))
    for place, text in (("stdout/stderr", captured.out + captured.err), ("event log", events)):
        assert "SASL authentication as" in text, f"the {place} does not hold the failure"
        assert [p for p in passwords if p in text] == [], place


def _timed(run) -> tuple[dg.ExecuteInProcessResult, float]:
    started = time.monotonic()
    result = run()
    return result, time.monotonic() - started


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(WORKER_SLOTS.name, ["0-1"])  # as the fleet sensor's first tick does
        yield inst


def test_a_worker_run_with_a_wrong_password_fails_fast_naming_its_variables(secure_cluster, secure_settings,
                                                                             instance, monkeypatch, capfd):
    kafka = secured_kafka(secure_cluster, secure_settings.namespace, monkeypatch, worker=WRONG)
    result, took = _timed(lambda: partition_worker.execute_in_process(
        partition_key="0-1", resources={"kafka": kafka, "queue": QueueResource()}, instance=instance,
        raise_on_error=False))
    assert not result.success and took < DEADLINE_S
    message, metadata = _failure(result)
    assert "SASL authentication as 'cvq-worker'" in message and "wrong password or an unknown user" in message
    assert "KAFKA_WORKER_SASL_PASSWORD" in message
    assert metadata == {"cause": "KafkaAuthError", "principal": "worker",
                        "username_variable": "KAFKA_WORKER_SASL_USERNAME"}
    assert WRONG not in message
    _assert_no_password_in_output_or_event_log(capfd, instance, result, [WRONG, *secure_cluster.passwords.values()])


def test_topic_assets_with_a_wrong_admin_password_fail_fast(secure_cluster, instance, monkeypatch):
    kafka = secured_kafka(secure_cluster, unique("s"), monkeypatch, admin=WRONG)
    result, took = _timed(lambda: dg.materialize(topic_assets, resources={"kafka": kafka, "queue": QueueResource()},
                                                 instance=instance, raise_on_error=False))
    assert not result.success and took < DEADLINE_S
    message, metadata = _failure(result)
    assert "SASL authentication as 'cvq-admin'" in message and "KAFKA_SASL_PASSWORD" in message
    assert metadata["principal"] == "admin" and WRONG not in message


def test_a_replay_run_as_an_unknown_user_fails_at_once_without_retries(secure_cluster, secure_settings, instance,
                                                                        monkeypatch):
    kafka = secured_kafka(secure_cluster, secure_settings.namespace, monkeypatch, replayer_user="cvq-nobody")
    result, took = _timed(lambda: reprocess_dlq.execute_in_process(
        resources={"kafka": kafka, "queue": QueueResource()}, instance=instance, raise_on_error=False))
    assert not result.success and took < DEADLINE_S
    message, metadata = _failure(result)
    assert "SASL authentication as 'cvq-nobody'" in message and "KAFKA_REPLAYER_SASL_USERNAME" in message
    assert metadata["principal"] == "replayer"
    kinds = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds  # a refused login is not a broker hiccup to retry for minutes


def test_a_worker_run_as_a_principal_without_the_acls_names_what_was_denied(secure_cluster, secure_settings,
                                                                         instance, monkeypatch):
    """Worker runs logging in as cvq-producer (a misconfigured KAFKA_WORKER_SASL_USERNAME), which may write the
    main topic only."""
    kafka = secured_kafka(secure_cluster, secure_settings.namespace, monkeypatch, worker_user=PRODUCER,
                          worker=secure_cluster.passwords[PRODUCER])
    result, took = _timed(lambda: partition_worker.execute_in_process(
        partition_key="0-1", resources={"kafka": kafka, "queue": QueueResource()}, instance=instance,
        raise_on_error=False))
    assert not result.success and took < DEADLINE_S
    message, metadata = _failure(result)
    assert "authorization denied: principal User:cvq-producer may not DESCRIBE on TOPIC" in message
    assert secure_settings.topic_names.retry in message and "KAFKA_WORKER_SASL_USERNAME" in message
    assert metadata["cause"] == "KafkaAuthorizationError"
    assert secure_cluster.passwords[PRODUCER] not in message
