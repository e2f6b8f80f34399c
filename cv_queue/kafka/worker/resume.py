"""Where a worker resumes: each partition's committed offset and the map of finished offsets above it, and how large
a map the broker takes.

A worker starts (and a fenced worker's successor starts) from what the worker group committed: the lowest offset
not done, plus, as that offset's metadata, the offsets above it that are done (offset_map.py). Those are skipped
when they are fetched again, since their outputs are already committed. Metadata that cv-queue did not write, or
that does not decode, stops the start: running over it could repeat paid work or publish a result twice, so
only a documented setting (worker.foreign_offset_metadata = "ignore") starts over it.

A committed offset is checked against its partition's log first. One above the log end (the topic was deleted and
recreated, or the log lost records) or below its start (retention deleted records no worker ran) would otherwise
let the fetch restart at the log start under the committed offset, where the tracker refuses it: a crash at every
start. Under worker.offset_reset = "fail" (the default) the worker does not start, naming the topic, partition,
committed offset and the log's bounds (exit 10); "earliest" and "latest" start at the log's start or end and log
what they skipped. A record fetched below the committed offset while running ends the worker the same way.
"""

import logging
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from cv_queue.kafka.client.failures import TopicStateError
from cv_queue.kafka.fleet.join import WorkerStartError
from cv_queue.kafka.wire.records import OutputRecord, SourceRecord
from cv_queue.kafka.worker.offset_map import (
    KAFKA_DEFAULT_METADATA_MAX_BYTES,
    CorruptOffsetMap,
    OffsetMapError,
    SettledAbove,
    decode,
)
from cv_queue.kafka.worker.startup import committed_offsets
from cv_queue.kafka.worker.tracker import PartitionTracker
from cv_queue.settings import QueueSettings

log = logging.getLogger("cv_queue.worker")

METADATA_LIMIT_CONFIG = "offset.metadata.max.bytes"


class OffsetMetadataError(WorkerStartError):
    """A committed offset carries metadata the worker will not start over (see worker.foreign_offset_metadata)."""


class OffsetOutOfRangeError(WorkerStartError, TopicStateError):
    """A committed offset lies outside its partition's log, and worker.offset_reset is "fail" (exit 10)."""


def metadata_limit(admin: AdminClient, configured: int | None, timeout_s: float = 15.0) -> int:
    """The largest commit metadata the worker may send: the smallest offset.metadata.max.bytes any broker reports,
    or Kafka's default where none will say (no DescribeConfigs ACL on the cluster, or Redpanda); the setting, when
    given, can only lower it (a map over the broker's limit would abort every transaction that carries it)."""
    broker_limit: int | None = None
    try:
        brokers = sorted(admin.list_topics(timeout=timeout_s).brokers)
        resources = [ConfigResource(ResourceType.BROKER, str(b)) for b in brokers]
        values = []
        for future in admin.describe_configs(resources, request_timeout=timeout_s).values():
            entry = future.result(timeout=timeout_s).get(METADATA_LIMIT_CONFIG)
            if entry is not None and entry.value is not None:
                values.append(int(entry.value))
        broker_limit = min(values) if values else None
    except Exception as exc:  # the default is right for every broker that does not change it
        log.info("could not read %s from the brokers (%s); assuming %d", METADATA_LIMIT_CONFIG, exc,
                 KAFKA_DEFAULT_METADATA_MAX_BYTES)
    if broker_limit is None:
        return configured if configured is not None else KAFKA_DEFAULT_METADATA_MAX_BYTES
    if configured is not None and configured > broker_limit:
        log.warning("worker.offset_metadata_max_bytes=%d is above the brokers' %s=%d; using %d", configured,
                    METADATA_LIMIT_CONFIG, broker_limit, broker_limit)
    return min(broker_limit, configured) if configured is not None else broker_limit


def restore_tracker(tp: TopicPartition, settings: QueueSettings,
                    log_end: int | None = None) -> PartitionTracker[OutputRecord]:
    """The tracker a partition resumes with: its committed offset (-1: none) and the finished offsets above it.
    `log_end`: the partition's end offset, which a map's done offsets must lie below."""
    committed = tp.offset if tp.offset >= 0 else -1
    settled = _settled_above(tp, settings, log_end)
    if settled is not None:
        log.info("%s[%d]: resuming at offset %d with %d offset(s) above it already done (up to %d)", tp.topic,
                 tp.partition, committed, settled.high - committed - len(settled.incomplete), settled.high)
    return PartitionTracker(committed, settled)


def _settled_above(tp: TopicPartition, settings: QueueSettings, log_end: int | None) -> SettledAbove | None:
    """The committed offset's map of done offsets; None when there is none or it is ignored (see
    worker.foreign_offset_metadata)."""
    committed = tp.offset if tp.offset >= 0 else -1
    metadata = getattr(tp, "metadata", None)
    try:
        settled = decode(metadata, committed) if committed >= 0 else None
        if settled is not None and log_end is not None and settled.high >= log_end:
            raise CorruptOffsetMap(f"the map marks offsets up to {settled.high} done, but the partition ends at "
                                   f"{log_end} (a map for another topic of the same name, or a recreated topic)")
    except OffsetMapError as exc:
        where = f"group {settings.group_id!r}, {tp.topic}[{tp.partition}] at offset {committed}"
        if settings.worker.foreign_offset_metadata == "ignore":
            log.warning("%s: ignoring its commit metadata (%s); every job from offset %d on runs, including any an "
                        "earlier worker finished (worker.foreign_offset_metadata=ignore)", where, exc, committed)
            return None
        raise OffsetMetadataError(
            f"{where}: {exc}. cv-queue keeps the finished offsets above the committed one there, and running over "
            "metadata it cannot read could repeat paid work or publish results twice. If another tool committed "
            "this group, reset its offsets without metadata, or set CVQ_WORKER__FOREIGN_OFFSET_METADATA=ignore to "
            "start from the committed offset anyway.") from exc
    return settled if settled is not None and not settled.empty else None


def resume_partitions(consumer: Consumer, settings: QueueSettings,
                      sources: list[tuple[str, int]]) -> dict[tuple[str, int], PartitionTracker[OutputRecord]]:
    """Assign `sources` at the worker group's committed offsets (the beginning where none is), with a tracker each
    that knows which offsets above them are already done; a committed offset outside its log is handled per
    worker.offset_reset (OffsetOutOfRangeError under "fail")."""
    trackers, assignment, refused = {}, [], []
    for tp in committed_offsets(consumer, sources):
        start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        if tp.offset < 0:
            trackers[(tp.topic, tp.partition)] = restore_tracker(tp, settings)
        else:
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30)
            if low <= tp.offset <= high:
                trackers[(tp.topic, tp.partition)] = restore_tracker(tp, settings, high)
            else:
                try:
                    trackers[(tp.topic, tp.partition)], start = reset_out_of_range(tp, low, high, settings)
                except OffsetOutOfRangeError as exc:
                    refused.append(str(exc))  # every such partition is named, not only the first
                    continue
        assignment.append(TopicPartition(tp.topic, tp.partition, start))
    if refused:
        raise OffsetOutOfRangeError("\n".join(refused))
    consumer.assign(assignment)
    return trackers


def reset_out_of_range(tp: TopicPartition, low: int, high: int,
                       settings: QueueSettings) -> tuple[PartitionTracker[OutputRecord], int]:
    """The tracker and fetch offset of a partition whose committed offset lies outside its log [low, high], per
    worker.offset_reset; OffsetOutOfRangeError under "fail"."""
    committed, policy = tp.offset, settings.worker.offset_reset
    if committed > high:
        why = "above the log end: the topic was deleted and recreated, or its log lost records"
    else:
        why = f"below the log start: retention or DeleteRecords removed offsets {committed}-{low - 1} before a " \
              "worker ran them"
    state = (f"group {settings.group_id!r} committed offset {committed} on {tp.topic}[{tp.partition}], whose log "
             f"now runs from offset {low} (log start) to {high} (log end): {why}")
    if policy == "fail":
        raise OffsetOutOfRangeError(
            f"{state}. The worker does not start. Set CVQ_WORKER__OFFSET_RESET=earliest to run every record the log "
            f"holds from offset {low}, or CVQ_WORKER__OFFSET_RESET=latest to skip to offset {high}.")
    held = f"offsets {low}-{high - 1}" if high > low else "no offset: the log is empty"
    if policy == "latest":
        log.warning("%s. CVQ_WORKER__OFFSET_RESET=latest: starting at the log end %d; what the log still holds (%s) "
                    "is skipped, not run", state, high, held)
        return PartitionTracker(high, recorded=committed), high
    if committed > high:  # the committed offset and its map belong to a log that is gone: every record here is new
        log.warning("%s. CVQ_WORKER__OFFSET_RESET=earliest: starting at the log start %d; every record the log holds "
                    "(%s) runs", state, low, held)
        return PartitionTracker(low, recorded=committed), low
    # Below the log start: the map's done offsets that the log still holds must not run again.
    base, settled = _rebased(_settled_above(tp, settings, high), low)
    log.warning("%s. CVQ_WORKER__OFFSET_RESET=earliest: starting at offset %d; offsets %d-%d are skipped, they are no "
                "longer in the log", state, base, committed, low - 1)
    return PartitionTracker(base, settled, recorded=committed), low


def _rebased(settled: SettledAbove | None, start: int) -> tuple[int, SettledAbove | None]:
    """The committed offset and map once every offset below `start` left the log: the lowest offset from `start`
    on that is not done, and the done offsets above it."""
    if settled is None or start > settled.high:
        return start, None
    later = [o for o in settled.incomplete if o >= start]  # `start` itself is not done exactly when listed here
    base = later[0] if later else settled.high + 1
    if base >= settled.high:
        return base, None
    return base, SettledAbove(base, settled.high, tuple(o for o in later if o > base))


def track_fetched(tracker: PartitionTracker[OutputRecord], consumer: Consumer | None, source: SourceRecord) -> bool:
    """`tracker.track` for a fetched record; a record below the committed offset, or out of order (the topic was
    deleted and recreated under the running worker, or its log was truncated: the fetch restarted at the log start)
    raises TopicStateError, so the worker ends with exit 10 and its restart applies worker.offset_reset."""
    try:
        return tracker.track(source.offset, source.size)
    except ValueError as exc:
        bounds = "unknown"
        try:
            if consumer is not None:
                bounds = "from offset {} to {}".format(*consumer.get_watermark_offsets(
                    TopicPartition(source.topic, source.partition), timeout=5))
        except KafkaException:
            pass  # the error says enough without them
        raise TopicStateError(
            f"{source.topic}[{source.partition}]: fetched {exc} (the log now runs "
            f"{bounds}): the topic was deleted and recreated under this worker, or its log was truncated. The worker "
            "stops (exit 10) after committing its finished jobs; at its restart CVQ_WORKER__OFFSET_RESET decides "
            "(fail, earliest or latest).") from exc


def partition_lags(consumer: Consumer, trackers: Mapping[tuple[str, int], PartitionTracker]) -> dict[tuple[str, int],
                                                                                                    int]:
    """Records of each partition at or above its committed offset (done ones in the map included: they are not
    committed as an offset), from the consumer's cached high watermarks; partitions it has none for are left out."""
    lags = {}
    for (topic, partition), tracker in trackers.items():
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except KafkaException:
            continue
        if high >= 0:
            lags[(topic, partition)] = max(0, high - max(tracker.committed, 0))
    return lags
