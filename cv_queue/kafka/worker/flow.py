"""Which source partitions a worker pauses, so that its memory stays bounded whatever the jobs do.

Four limits, each with hysteresis (pause at the cap, resume at half) so a partition does not flap:
- per partition, the bytes and records it holds in the worker (records not yet settled plus outputs not yet
  produced): only that partition is paused;
- per partition, the size of its map of finished offsets (the commit metadata, tracker.py): at 75% of the broker's
  limit it stops fetching, so no new record can widen the map; the records it already has still run, and those at
  the bottom move its committed offset and shrink the map. Even past that, tracker.py never plans a map over the
  limit (outputs wait instead), so the broker never has to refuse one, and a broker that does not enforce the limit
  (Redpanda) gets no larger ones. A partition still fetching through a map restored at start-up is exempt from
  both: it holds no more than that map lists, and only fetching on shrinks it;
- per retry partition, the retry records waiting for their due time (counted apart from main-topic work);
- across the worker, the jobs accepted but not yet started: all partitions pause when the handlers fall behind
  (or wait for the provider's budget), except the interactive lane's: its jobs are started first, so they never
  wait behind the bulk backlog that filled the buffer, and its own per-partition limits still bound it.

And one that is no memory bound: while the fleet has spent llm.spend.limit in the current window, every partition
pauses (both lanes and the retry topic), until the next window. Jobs already fetched wait in the pool; none fails.
"""

from collections.abc import Iterable, Mapping

from cv_queue.kafka.worker.inflight import PartitionTracker
from cv_queue.kafka.worker.offset_map import KAFKA_DEFAULT_METADATA_MAX_BYTES
from cv_queue.settings import QueueSettings

#: The share of the metadata limit at which a partition stops fetching (Parallel Consumer's threshold).
MAP_PAUSE_SHARE = 0.75

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
    def __init__(self, settings: QueueSettings, sources: Iterable[TopicPartitionKey], retry_topic: str,
                 interactive_topic: str | None = None) -> None:
        self.worker = settings.worker
        self.max_waiting = settings.retry.max_waiting_per_partition
        self.retry_topic = retry_topic
        self.sources = list(sources)
        self.metadata_limit = KAFKA_DEFAULT_METADATA_MAX_BYTES  # the broker's, set by the worker at start
        self._held = {tp: _Gate() for tp in self.sources}
        self._waiting = {tp: _Gate() for tp in self.sources if tp[0] == retry_topic}
        self._buffered = _Gate()
        self._bulk = {tp for tp in self.sources if tp[0] != interactive_topic}

    def wanted(self, buffered: int, trackers: Mapping[TopicPartitionKey, PartitionTracker],
               waiting_by_partition: Mapping[int, int], spend_exhausted: bool = False) -> set[TopicPartitionKey]:
        """The partitions that should be paused now."""
        if spend_exhausted:
            return set(self.sources)
        paused = set(self._bulk) if self._buffered.update(buffered, self.worker.max_buffered) else set()
        for tp, gate in self._held.items():
            tracker = trackers[tp]
            if tracker.restoring:
                # Fetching through a restored map's range: every record there is skipped (done) or one the map
                # lists as not done, so what the partition can hold is bounded by the map, and it must go on
                # fetching to reach the records that shrink it (a map restored under a larger limit holds every
                # output back until they finish: pausing would wait for records it stopped fetching).
                level = 0.0
            else:  # whichever of bytes, records and map size is fullest decides, as a fraction of its cap
                level = max(tracker.open_bytes / self.worker.max_partition_bytes,
                            tracker.open_count / self.worker.max_partition_records,
                            tracker.map_bytes / (MAP_PAUSE_SHARE * self.metadata_limit))
            if gate.update(level, 1.0):
                paused.add(tp)
        for tp, gate in self._waiting.items():
            if gate.update(waiting_by_partition.get(tp[1], 0), self.max_waiting):
                paused.add(tp)
        return paused
