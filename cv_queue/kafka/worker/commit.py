"""The commit step: released outputs, and the offsets and maps that record them as done, as one transaction."""

import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cv_queue.kafka.client.stall import WATCHDOG
from cv_queue.kafka.client.transaction import TransactionFencedError, commit_atomically
from cv_queue.kafka.metrics import WorkerMetrics
from cv_queue.kafka.wire.records import OutputRecord
from cv_queue.kafka.worker.inflight import PartitionTracker
from cv_queue.kafka.worker.offset_map import KAFKA_DEFAULT_METADATA_MAX_BYTES, NUL_BYTES

Trackers = dict[tuple[str, int], PartitionTracker[OutputRecord]]


class WatermarkCommitter:
    """Takes each partition's releasable outputs and commits them, with the offsets and maps that record them as
    done, in one Kafka transaction (tracker.py decides what may go; this sends it)."""

    def __init__(self, consumer: Consumer, producer: Producer, trackers: Trackers,
                 stopping: Callable[[], bool], metrics: WorkerMetrics, stall_limit_s: float,
                 metadata_limit: int = KAFKA_DEFAULT_METADATA_MAX_BYTES, at_once: bool = True,
                 give_up_after_s: float | None = None) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.producer = producer
        self.trackers = trackers
        self.stopping = stopping
        self.stall_limit_s = stall_limit_s
        self.metadata_limit = metadata_limit
        self.at_once = at_once
        self.give_up_after_s = give_up_after_s  # a transaction failing this long without a commit ends the worker
        # True from the first transactional call of a commit until it returns or ends the transaction itself (its
        # own abort, or fencing): a BaseException escaping in between leaves it set, so close() aborts.
        self.in_transaction = False
        self.commits = 0

    def commit(self) -> None:
        outputs: list[OutputRecord] = []
        offsets: list[TopicPartition] = []
        positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(
            [TopicPartition(t, p) for t, p in self.trackers])}
        for (topic, partition), tracker in self.trackers.items():
            release = tracker.release(self.metadata_limit, self.at_once, positions[(topic, partition)])
            if release is None:
                continue
            outputs.extend(release.outputs)
            if len(release.metadata) + NUL_BYTES > self.metadata_limit:  # tracker.py never plans one: a bug
                raise AssertionError(f"{topic}[{partition}]: a {len(release.metadata)}-byte offset map over the "
                                     f"{self.metadata_limit}-byte limit would abort the transaction")
            # No metadata at all when the map is empty: the broker then stores none, clearing an earlier map.
            offsets.append(TopicPartition(topic, partition, release.offset, metadata=release.metadata)
                           if release.metadata else TopicPartition(topic, partition, release.offset))
            self.metrics.map_bytes[(topic, partition)] = tracker.map_bytes
        if not offsets:
            return
        started = time.monotonic()
        self.in_transaction = True
        try:
            commit_atomically(self.producer, outputs, offsets, self.consumer.consumer_group_metadata(),
                              stopping=self.stopping, on_abort=self.metrics.count_abort,
                              stall_limit_s=self.stall_limit_s, give_up_after_s=self.give_up_after_s)
        except Exception:
            # commit_atomically ends the transaction (aborts it, or is fenced and cannot) before raising any
            # Exception. A BaseException (KeyboardInterrupt, SystemExit) escapes it with the transaction open, and
            # in_transaction stays set for abort_if_open.
            self.in_transaction = False
            raise
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
            if exc.args[0].code() == KafkaError._STATE:  # the escape came before begin_transaction: none open
                return None
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
