"""Committed offsets while a transaction's offset commit is still open: an error, never "nothing committed"."""

import time

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from cv_queue.kafka.admin.lag import committed_offsets, group_lag
from cv_queue.kafka.client.clients import admin_client, transactional_producer
from cv_queue_tests.support import unique


def test_a_pending_transactional_commit_is_an_error_not_a_full_partition_of_lag(conn, provisioned):
    topic = provisioned.topic_names.results
    group = unique("lag-group")
    admin = admin_client(conn)
    producer = transactional_producer(conn, unique("lag-txn"))
    producer.init_transactions(30)
    producer.begin_transaction()
    for _ in range(3):
        producer.produce(topic, b"x", partition=0)
    producer.commit_transaction(30)
    metadata = Consumer({**conn.client_config(), "group.id": group}).consumer_group_metadata()
    producer.begin_transaction()
    producer.produce(topic, b"y", partition=0)
    producer.send_offsets_to_transaction([TopicPartition(topic, 0, 3)], metadata, 30)
    started = time.monotonic()
    with pytest.raises(KafkaException, match="UNSTABLE_OFFSET_COMMIT"):
        committed_offsets(admin, group, topic, [0], settle_s=1.0)
    assert time.monotonic() - started < 30  # it gives up; it does not wait for the transaction
    producer.commit_transaction(30)
    (row,) = group_lag(admin, group, topic, [0])
    assert row.committed == 3  # read once the commit settled
    assert row.lag == row.end_offset - 3
