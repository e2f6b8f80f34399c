"""The commit step: released outputs and the watermark offsets they settle, produced and committed as one unit."""

import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from cv_queue.kafka.inflight import PartitionTracker
from cv_queue.kafka.metrics import WorkerMetrics
from cv_queue.kafka.records import OutputRecord
from cv_queue.kafka.stall import WATCHDOG
from cv_queue.kafka.transaction import TransactionFencedError, commit_atomically

Trackers = dict[tuple[str, int], PartitionTracker[OutputRecord]]


class WatermarkCommitter:
    """Pops each partition's settled prefix and commits it, with its outputs, in one Kafka transaction."""

    def __init__(self, consumer: Consumer, producer: Producer, trackers: Trackers,
                 stopping: Callable[[], bool], metrics: WorkerMetrics, stall_limit_s: float) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.producer = producer
        self.trackers = trackers
        self.stopping = stopping
        self.stall_limit_s = stall_limit_s
        self.in_transaction = False
        self.commits = 0

    def commit(self) -> None:
        outputs: list[OutputRecord] = []
        offsets: list[TopicPartition] = []
        positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(
            [TopicPartition(t, p) for t, p in self.trackers])}
        for (topic, partition), tracker in self.trackers.items():
            before = tracker.committed
            committed, released = tracker.release()
            outputs.extend(released)
            if tracker.open_count == 0 and positions[(topic, partition)] > committed:
                # Nothing open: commit the fetch position, which lies past transaction markers, so an idle worker
                # shows zero lag instead of one phantom record per transaction.
                committed = tracker.committed = positions[(topic, partition)]
            if committed != before:
                offsets.append(TopicPartition(topic, partition, committed))
        if not offsets:
            return
        started = time.monotonic()
        self.in_transaction = True
        try:
            commit_atomically(self.producer, outputs, offsets, self.consumer.consumer_group_metadata(),
                              stopping=self.stopping, on_abort=self.metrics.count_abort,
                              stall_limit_s=self.stall_limit_s)
        finally:
            self.in_transaction = False
        self.commits += 1
        self.metrics.commits += 1
        self.metrics.commit_seconds.observe(time.monotonic() - started)

    def abort_if_open(self, timeout_s: float = 10) -> str | None:
        """On close: abort a transaction a failure left open, so it does not hold the output partitions' last stable
        offset until transaction.timeout.ms. Returns the error if the abort failed."""
        if not self.in_transaction:
            return None
        self.in_transaction = False
        try:
            with WATCHDOG.watch("abort_transaction on close", timeout_s + self.stall_limit_s):
                self.producer.abort_transaction(timeout_s)
        except KafkaException as exc:
            return str(exc)
        self.metrics.count_abort()
        return None


def check_still_owner(consumer: Consumer, trackers: Trackers) -> None:
    """An idle worker never touches its producer, so it would not learn that a worker of another layout fenced it;
    the group's committed offsets tell: if one of our partitions was committed past our own watermark, someone else
    owns it now (TransactionFencedError)."""
    try:
        remote = consumer.committed([TopicPartition(t, p) for t, p in trackers], timeout=5)
    except KafkaException:
        return  # the broker is away: the next transaction will tell
    for tp in remote:
        ours = trackers[(tp.topic, tp.partition)].committed
        if tp.offset > ours >= 0 or (tp.offset >= 0 and ours < 0):
            raise TransactionFencedError(f"{tp.topic}[{tp.partition}] was committed to {tp.offset} by another worker")
