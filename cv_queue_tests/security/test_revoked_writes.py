"""A write ACL revoked while a `cv-queue worker` or `cv-queue dlq replay` runs (issue 16, item 2), on the secured
broker: the process ends with exit 7 (EXIT_DENIED), naming the denial, within its transaction_give_up_s, instead of
redoing its transaction every few seconds for ever (or exiting 4, as a plain fatal error)."""

import subprocess
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AclBindingFilter

from cv_queue.errors import ErrorCategory, TransientJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.acls import ADMIN, REPLAYER, WORKER, AclRule, Pattern
from cv_queue.kafka.client.auth import EXIT_DENIED
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.wire.envelope import now_ms
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.kafka.procs import spawn_worker, stop_all
from cv_queue_tests.kafka.test_replay import _plant_letter
from cv_queue_tests.security.conftest import SecureCluster
from cv_queue_tests.support import read_topic

GIVE_UP_S = 10
BOUND_S = GIVE_UP_S + 150  # the limit, plus a try that waits out its own timeouts


def _revoke_write(cluster: SecureCluster, principal: str, topic: str) -> None:
    """Delete `principal`'s WRITE ACL on `topic`, as an administrator tightening the rules would."""
    rule = AclRule(principal, "TOPIC", topic, Pattern.LITERAL, "WRITE").binding()
    selector = AclBindingFilter(rule.restype, rule.name, rule.resource_pattern_type, rule.principal, rule.host,
                                rule.operation, rule.permission_type)
    admin = admin_client(cluster.connection(ADMIN))  # held until the answer: a collected client cancels it
    deleted = admin.delete_acls([selector], request_timeout=30)[selector].result(30)
    assert deleted, f"no WRITE ACL of {principal} on {topic} to revoke"
    time.sleep(2)  # the authorizer reads the change from the metadata log


def test_a_worker_denied_its_results_topic_mid_run_exits_7(secure_cluster, secure_settings, tmp_path):
    settings = secure_settings
    names = settings.topic_names
    slot = settings.slots()[0]
    admin = secure_cluster.connection(ADMIN)
    producer = JobProducer(admin, names.main)
    first = producer.enqueue_batch(list(sample_jobs(40, seed=81, prefix="before")))
    log = tmp_path / "worker.log"
    env = secure_cluster.env(WORKER, CVQ_WORKER__TRANSACTION_GIVE_UP_S=str(GIVE_UP_S))
    proc = spawn_worker(settings, slot.name, log, extra_env=env)
    try:
        read_topic(admin, names.results, expect=sum(1 for d in first if d.partition in slot.partitions),
                   timeout_s=120)
        _revoke_write(secure_cluster, WORKER, names.results)
        revoked_at = time.monotonic()
        producer.enqueue_batch(list(sample_jobs(40, seed=82, prefix="after")))
        code = proc.wait(BOUND_S)  # before: exit 4, or the transaction redone for ever
        took = time.monotonic() - revoked_at
    finally:
        stop_all(proc)
    text = log.read_text(errors="replace")
    assert code == EXIT_DENIED, text
    assert "TOPIC_AUTHORIZATION_FAILED" in text.split("cannot continue", 1)[-1]
    assert took < BOUND_S
    assert all(password not in text for password in secure_cluster.passwords.values())


def test_a_replay_denied_its_target_mid_run_exits_7(secure_cluster, secure_settings):
    settings = secure_settings
    names = settings.topic_names
    raw = Producer(secure_cluster.connection(ADMIN).client_config())
    for i in range(3):
        _plant_letter(raw, settings, f"t{i}".encode(), TransientJobError("x"), ErrorCategory.TRANSIENT, now_ms())
    raw.flush(30)
    # Still allowed to describe the main topic, so the replay starts; its writes are refused.
    _revoke_write(secure_cluster, REPLAYER, names.main)
    env = secure_cluster.env(REPLAYER, CVQ_NAMESPACE=settings.namespace,
                             CVQ_REPLAY__TRANSACTION_GIVE_UP_S=str(GIVE_UP_S))
    began = time.monotonic()
    proc = subprocess.run([CV_QUEUE, "dlq", "replay"], env=env, capture_output=True, text=True, timeout=BOUND_S,
                          check=False)  # before: redone every few seconds until killed at the timeout
    assert proc.returncode == EXIT_DENIED, proc.stderr
    assert "TOPIC_AUTHORIZATION_FAILED" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - began < BOUND_S
    assert all(password not in proc.stderr for password in secure_cluster.passwords.values())
