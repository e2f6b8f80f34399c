"""Which source partitions a worker pauses, so that its memory stays bounded whatever the jobs do.

Three limits, each with hysteresis (pause at the cap, resume at half) so a partition does not flap:
- per partition, the bytes and records it holds in the worker (records not yet settled plus outputs waiting for the
  watermark): a hung job stalls only its own partition's watermark, so only that partition is paused;
- per retry partition, the retry records waiting for their due time (counted apart from main-topic work);
- across the worker, the jobs accepted but not yet started: all partitions pause when the handlers fall behind.
"""

from collections.abc import Iterable, Mapping

from cv_queue.kafka.inflight import PartitionTracker
from cv_queue.settings import QueueSettings

TopicPartitionKey = tuple[str, int]


class _Gate:
    """A pause decision with hysteresis."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def update(self, level: float, cap: float) -> bool:
        if level >= cap:
            self.closed = True
        elif level <= cap / 2:
            self.closed = False
        return self.closed


class FlowControl:
    def __init__(self, settings: QueueSettings, sources: Iterable[TopicPartitionKey], retry_topic: str) -> None:
        self.worker = settings.worker
        self.max_waiting = settings.retry.max_waiting_per_partition
        self.retry_topic = retry_topic
        self.sources = list(sources)
        self._held = {tp: _Gate() for tp in self.sources}
        self._waiting = {tp: _Gate() for tp in self.sources if tp[0] == retry_topic}
        self._buffered = _Gate()

    def wanted(self, buffered: int, trackers: Mapping[TopicPartitionKey, PartitionTracker],
               waiting_by_partition: Mapping[int, int]) -> set[TopicPartitionKey]:
        """The partitions that should be paused now."""
        if self._buffered.update(buffered, self.worker.max_buffered):
            return set(self.sources)
        paused = set()
        for tp, gate in self._held.items():
            tracker = trackers[tp]
            # Whichever of bytes and records is fuller decides, as a fraction of its cap.
            level = max(tracker.open_bytes / self.worker.max_partition_bytes,
                        tracker.open_count / self.worker.max_partition_records)
            if gate.update(level, 1.0):
                paused.add(tp)
        for tp, gate in self._waiting.items():
            if gate.update(waiting_by_partition.get(tp[1], 0), self.max_waiting):
                paused.add(tp)
        return paused
