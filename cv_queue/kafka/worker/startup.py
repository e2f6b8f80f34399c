"""What a worker checks and reads before it consumes, once it joined the fleet (cv_queue/kafka/fleet/join.py): its
topics, their size limits, its committed offsets; and which resource a start-up denial names."""

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from cv_queue.kafka.client.auth import KafkaAuthorizationError, authorization_code, check_access
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.join import START_TIMEOUT_S, WorkerStartError
from cv_queue.kafka.wire.fit import KAFKA_DEFAULT_MAX_MESSAGE_BYTES, OutputLimits, read_output_limits
from cv_queue.settings import KafkaConnection, QueueSettings, Slot


def check_topics(consumer: Consumer, conn: KafkaConnection, settings: QueueSettings, slot: Slot) -> None:
    """The worker's topics exist and have its partitions. On a secured broker, the login and TLS are checked first
    (KafkaAuthError within seconds instead of retries for ever), and a topic it may not describe is named."""
    check_access(conn)
    names = settings.topic_names
    metadata = consumer.list_topics(timeout=START_TIMEOUT_S)
    for topic in (*names.consumed, names.dlq, names.results):
        meta = metadata.topics.get(topic)
        if meta is None and conn.security_protocol.upper() != "PLAINTEXT":
            # A broker lists only the topics a principal may describe: asked for this one by name, it says which.
            meta = consumer.list_topics(topic, timeout=START_TIMEOUT_S).topics.get(topic)
        if meta is not None and meta.error is not None and meta.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise KafkaAuthorizationError("DESCRIBE", "TOPIC", topic, conn.sasl_username)
        if meta is None or meta.error is not None:
            raise WorkerStartError(
                f"topic {topic!r} does not exist on {conn.bootstrap_servers}; "
                "run `cv-queue topics provision` (or materialize the kafka_topics assets) first"
            )
    for topic in names.consumed:
        have = set(metadata.topics[topic].partitions)
        missing = [p for p in slot.partitions if p not in have]
        if missing:
            raise WorkerStartError(f"slot {slot.name} needs partitions {missing} of {topic!r}, which has {len(have)}")


def committed_offsets(consumer: Consumer, partitions: list[tuple[str, int]]) -> list[TopicPartition]:
    """Fetch committed offsets explicitly (not through a pending assignment, which can stall on a brand-new
    cluster) and retry until the coordinator answers."""
    wanted = [TopicPartition(t, p) for t, p in partitions]
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            return consumer.committed(wanted, timeout=10)
        except KafkaException as exc:
            if authorization_code(exc) is not None:  # retrying cannot grant an ACL; the worker names what was denied
                raise
            if time.monotonic() > deadline:
                raise WorkerStartError(f"could not read committed offsets: {exc}") from exc
            time.sleep(0.5)


def output_limits(conn: KafkaConnection, settings: QueueSettings) -> OutputLimits:
    """max.message.bytes of the topics a worker writes, from the broker (the settings where it won't say)."""
    names = settings.topic_names
    topics = settings.topics
    main_limit = int(topics.main_config.get("max.message.bytes", KAFKA_DEFAULT_MAX_MESSAGE_BYTES))
    fallback = {names.results: main_limit, names.retry: main_limit, names.dlq: topics.max_message_bytes}
    return read_output_limits(admin_client(conn), list(fallback), fallback)


def denied_resource(settings: QueueSettings, slot: Slot, code: int) -> str:
    """The resource of a start-up authorization failure, by its code: the one of that type the worker uses."""
    if code == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return settings.transactional_id(slot)
    if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
        return settings.group_id
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        names = settings.topic_names
        return ", ".join([*names.consumed, names.results, names.dlq])
    return "kafka-cluster"
