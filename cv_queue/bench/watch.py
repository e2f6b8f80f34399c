"""Counting outcomes as they become visible: the first result or dead letter of each job, and any repeat."""

import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cv_queue.kafka.client.clients import poll_batch
from cv_queue.settings import KafkaConnection


class SettleWatcher(threading.Thread):
    """Reads the given topics read_committed from the start; records when each key first appeared."""

    def __init__(self, conn: KafkaConnection, topics: list[str]) -> None:
        super().__init__(daemon=True, name="bench-watch")
        self.first_seen: dict[bytes, float] = {}
        self.duplicates = 0
        self.total = 0
        self._halt = threading.Event()
        self._consumer = Consumer({**conn.client_config(), "group.id": f"bench-watch-{time.time()}",
                                   "enable.auto.commit": False, "isolation.level": "read_committed",
                                   "fetch.wait.max.ms": 10})
        meta = self._consumer.list_topics(timeout=10).topics
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta[t].partitions])

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                batch = poll_batch(self._consumer, 5000, 0.05)
                now = time.monotonic()
                for msg in batch:
                    if msg.error() is not None:
                        continue
                    self.total += 1
                    key = msg.key() or b""
                    if key in self.first_seen:
                        self.duplicates += 1
                    else:
                        self.first_seen[key] = now
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def read_values(conn: KafkaConnection, topic: str, timeout_s: float = 60.0) -> list[bytes]:
    """The values of every committed record of `topic`, read from the start to the end offsets it had."""
    consumer = Consumer({**conn.client_config(), "group.id": f"bench-read-{time.time()}", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        bounds = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        ends = {p: high for p, (low, high) in bounds.items() if high > low}  # empty partitions are read already
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = {tp.partition: tp.offset for tp in consumer.position(
                [TopicPartition(topic, p) for p in partitions])}
            if all(positions[p] >= end for p, end in ends.items()):  # past the last record and its marker
                return values
            for msg in poll_batch(consumer, 5000, 0.2):
                if msg.error() is None and msg.value() is not None:
                    values.append(msg.value())
        raise TimeoutError(f"could not read {topic} to its end within {timeout_s:.0f}s")
    finally:
        consumer.close()
