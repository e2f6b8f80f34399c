"""Least privilege holds on the secured broker: each principal is denied what its role does not need."""

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cv_queue.kafka.admin.acls import PRODUCER, WORKER
from cv_queue.kafka.client.auth import authorization_code
from cv_queue.kafka.client.clients import transactional_producer
from cv_queue.settings import QueueSettings
from cv_queue_tests.support import unique


def test_the_producer_cannot_read_results(secure_cluster, secure_settings):
    conn = secure_cluster.connection(PRODUCER)
    consumer = Consumer({**conn.client_config(), "group.id": unique("peek-"), "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(secure_settings.topic_names.results, 0, OFFSET_BEGINNING)])
        errors = []
        for _ in range(40):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is not None:
                errors.append(msg.error().code())
                break
            assert msg is None, "cvq-producer read a record of the results topic"
        assert KafkaError.TOPIC_AUTHORIZATION_FAILED in errors or KafkaError.GROUP_AUTHORIZATION_FAILED in errors
    finally:
        consumer.close()


def test_the_worker_cannot_write_the_parking_lot(secure_cluster, secure_settings):
    conn = secure_cluster.connection(WORKER)
    producer = Producer({**conn.client_config(), "enable.idempotence": True, "acks": "all"})
    outcome: list[KafkaError | None] = []
    producer.produce(secure_settings.topic_names.parked, b"x", on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(30)
    assert outcome and outcome[0] is not None
    assert outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_worker_cannot_use_another_namespaces_transactional_ids(secure_cluster, secure_settings):
    conn = secure_cluster.connection(WORKER)
    own = transactional_producer(conn, secure_settings.transactional_id(secure_settings.slots()[0]))
    own.init_transactions(30)  # its own namespace's id works ...
    foreign = QueueSettings(namespace=unique("other"))
    producer = transactional_producer(conn, foreign.transactional_id(foreign.slots()[0]))
    with pytest.raises(KafkaException) as denied:  # ... another namespace's is denied
        producer.init_transactions(30)
    assert authorization_code(denied.value) == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
