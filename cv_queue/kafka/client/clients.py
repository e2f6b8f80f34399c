"""librdkafka configurations for each client role, spelled out property by property.

Every client reports errors and log lines through CLIENT_LOG: librdkafka reports broker trouble through them, and
a queue that swallows those reports is one nobody can debug, while one that prints each failed reconnect buries it.
"""

import logging
import operator
from typing import Any

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient

from cv_queue.kafka.client.client_log import CLIENT_LOG
from cv_queue.settings import KafkaConnection, QueueSettings

log = logging.getLogger("cv_queue.kafka")

# murmur2 is the Java client's partitioner: jobs keyed by job_id land on the same partition whichever
# language's producer sent them, and a DLQ replay puts a job back where it first went.
PARTITIONER = "murmur2_random"


IDLE_CONNECTION_CLOSE_MS = 10_000


def client_config(conn: KafkaConnection, role: str) -> dict[str, Any]:
    """The connection's librdkafka config for a client of `role` (its client.id suffix), logging through CLIENT_LOG."""
    conf = conn.client_config()
    conf["client.id"] = f"{conn.client_id}-{role}"
    conf["error_cb"] = CLIENT_LOG.error_cb
    conf["logger"] = CLIENT_LOG
    # librdkafka 2.16's default ("rebootstrap") decommissions every broker once all are down; after the broker
    # restarts, send_offsets_to_transaction then waits forever for the decommissioned group coordinator.
    conf["metadata.recovery.strategy"] = "none"
    return conf


def admin_client(conn: KafkaConnection) -> AdminClient:
    return AdminClient(client_config(conn, "admin"))


def job_producer(conn: KafkaConnection) -> Producer:
    """The enqueue producer: idempotent, acks=all, snappy, keyed by job_id."""
    conf = client_config(conn, "producer")
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "snappy",
            "partitioner": PARTITIONER,
            "linger.ms": 5,
            "delivery.timeout.ms": 30_000,
        }
    )
    return Producer(conf)


def transactional_producer(conn: KafkaConnection, transactional_id: str, timeout_ms: int = 60_000,
                           max_message_bytes: int = 1_000_000) -> Producer:
    """A producer whose writes and consumed offsets commit atomically; a newer one with the same id fences it.

    `max_message_bytes` must cover the largest record any output topic accepts (librdkafka refuses bigger ones
    locally, before the broker sees them).
    """
    conf = client_config(conn, "txn")
    conf.update(
        {
            "message.max.bytes": max_message_bytes,
            "transactional.id": transactional_id,
            # librdkafka re-looks-up a coordinator only when some broker connection changes state; when the cached
            # coordinator's node died and left the metadata, that may never happen (librdkafka#5511) and
            # send_offsets_to_transaction blocks until the node returns. Idle connections closing now and then
            # are such state changes. The stall watchdog (stall.py) is the backstop.
            "connections.max.idle.ms": IDLE_CONNECTION_CLOSE_MS,
            "transaction.timeout.ms": timeout_ms,
            # A record that cannot be delivered (its topic deleted) must fail here, as an abortable error that says
            # which record and topic, before the broker times the whole transaction out: that bumps the producer's
            # epoch, which librdkafka reports as being fenced by a newer instance, hiding the cause (failures.py).
            "message.timeout.ms": max(1000, timeout_ms * 3 // 4),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "snappy",
            "partitioner": PARTITIONER,
            "linger.ms": 5,
        }
    )
    return Producer(conf)


def assigned_consumer(conn: KafkaConnection, settings: QueueSettings, group_id: str, role: str) -> Consumer:
    """A consumer that is given partitions (assign) and commits only through transactions.

    Reading read_committed means a record produced by an aborted or still-open transaction is never
    seen, so a worker never acts on a retry or result that a crashed worker did not commit.
    """
    fetch = settings.fetch
    conf = client_config(conn, role)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": fetch.fetch_max_bytes,
            "fetch.wait.max.ms": fetch.fetch_wait_max_ms,
            "fetch.min.bytes": fetch.fetch_min_bytes,
            "max.partition.fetch.bytes": fetch.max_partition_fetch_bytes,
            "queued.max.messages.kbytes": fetch.queued_max_messages_kbytes,
            "enable.partition.eof": False,
        }
    )
    return Consumer(conf)


def poll_batch(consumer: Consumer, max_records: int, timeout_s: float) -> list[Message]:
    """Up to max_records messages, returning as soon as the first one arrives.

    `Consumer.consume(n, timeout)` waits until n messages arrived *or* the timeout passed, so an idle
    worker would sit out the whole timeout with one job in hand; `poll` returns at the first message,
    and a non-blocking `consume` then takes whatever else is already fetched.
    """
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    if max_records <= 1:
        return [first]
    return [first, *consumer.consume(max_records - 1, 0)]


def message_headers(msg: Message) -> tuple[list[tuple[str, bytes | None]], Exception | None]:
    """A message's headers, or none and the reason when the client cannot decode them.

    confluent-kafka decodes header *names* as UTF-8 and raises (a SystemError wrapping UnicodeDecodeError) for any
    other name a foreign producer wrote; every reader of our topics must survive such a record.
    """
    try:
        # Not msg.headers(): once CPython 3.11 specializes that call site, the client's error no longer raises.
        return operator.methodcaller("headers")(msg) or [], None
    except Exception as exc:
        return [], exc
