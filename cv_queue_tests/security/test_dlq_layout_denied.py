"""The DLQ layout check on the secured broker (issue 16, item 5): a replayer that may not describe the layout topic
is refused with exit 7, naming the topic, instead of taking "not in the list of topics" for "no layout recorded"
and replaying unchecked (a broker with ACLs leaves a topic the principal may not describe out of that list)."""

import subprocess
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AclBindingFilter

from cv_queue.errors import ErrorCategory, TransientJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.acls import ADMIN, REPLAYER, AclRule, Pattern
from cv_queue.kafka.admin.lag import committed_offsets
from cv_queue.kafka.admin.names import layout_topic
from cv_queue.kafka.client.auth import EXIT_DENIED, KafkaAuthorizationError
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.dlq_layout import check_dlq_layout
from cv_queue.kafka.replay.replayer import replay_dead_letters
from cv_queue.kafka.replay.request import ReplayRequest
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.kafka.test_dlq_layout import plant_letter
from cv_queue_tests.security.conftest import SecureCluster
from cv_queue_tests.support import read_topic


def _revoke(cluster: SecureCluster, principal: str, topic: str, operations: list[str]) -> None:
    """Delete `principal`'s ACLs for `operations` on `topic`, as if they had never been applied."""
    admin = admin_client(cluster.connection(ADMIN))
    for operation in operations:
        rule = AclRule(principal, "TOPIC", topic, Pattern.LITERAL, operation).binding()
        selector = AclBindingFilter(rule.restype, rule.name, rule.resource_pattern_type, rule.principal, rule.host,
                                    rule.operation, rule.permission_type)
        assert admin.delete_acls([selector], request_timeout=30)[selector].result(30), (principal, operation)
    time.sleep(2)  # the authorizer reads the change from the metadata log


def test_a_replayer_not_granted_the_layout_topic_exits_7_instead_of_replaying_unchecked(secure_cluster,
                                                                                       secure_settings):
    settings = secure_settings
    names = settings.topic_names
    layout = layout_topic(settings)
    admin_conn = secure_cluster.connection(ADMIN)
    check_dlq_layout(admin_conn, admin_client(admin_conn), settings, record=True)  # provisioning records it
    raw = Producer(admin_conn.client_config())
    job = next(sample_jobs(1, seed=91, prefix="denied"))
    plant_letter(raw, settings, job, TransientJobError("blip"), ErrorCategory.TRANSIENT,
                 settings.dlq_partition(ErrorCategory.TRANSIENT, None))
    assert raw.flush(30) == 0
    # An upgraded cluster before `cv-queue acls apply` is re-run: the replayer holds no ACL on the layout topic.
    _revoke(secure_cluster, REPLAYER, layout, ["DESCRIBE", "READ"])

    with pytest.raises(KafkaAuthorizationError) as refused:
        replay_dead_letters(secure_cluster.connection(REPLAYER), settings, ReplayRequest())
    assert refused.value.resource == layout
    env = secure_cluster.env(REPLAYER, CVQ_NAMESPACE=settings.namespace)
    proc = subprocess.run([CV_QUEUE, "dlq", "replay"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == EXIT_DENIED, proc.stdout + proc.stderr
    assert layout in proc.stderr and "Traceback" not in proc.stderr
    assert all(password not in proc.stderr for password in secure_cluster.passwords.values())

    # Nothing was replayed or committed.
    assert read_topic(admin_conn, names.main, idle_s=1.0) == []
    transient_p = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    assert committed_offsets(admin_client(admin_conn), settings.replay_group_id, names.dlq,
                             [transient_p]) == {transient_p: None}
