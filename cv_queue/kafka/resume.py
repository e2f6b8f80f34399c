"""Where a worker resumes: each partition's committed offset and the map of finished offsets above it, and how large
a map the broker takes.

A worker starts (and a fenced worker's successor starts) from what the worker group committed: the lowest offset
not done, plus, as that offset's metadata, the offsets above it that are done (offset_map.py). Those are skipped
when they are fetched again, since their outputs are already committed. Metadata that cv-queue did not write, or
that does not decode, stops the start: running over it could repeat paid work or publish a result twice, so
only a documented setting (worker.foreign_offset_metadata = "ignore") starts over it.
"""

import logging
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from cv_queue.kafka.offset_map import KAFKA_DEFAULT_METADATA_MAX_BYTES, CorruptOffsetMap, OffsetMapError, decode
from cv_queue.kafka.records import OutputRecord
from cv_queue.kafka.startup import WorkerStartError, committed_offsets
from cv_queue.kafka.tracker import PartitionTracker
from cv_queue.settings import QueueSettings

log = logging.getLogger("cv_queue.worker")

METADATA_LIMIT_CONFIG = "offset.metadata.max.bytes"


class OffsetMetadataError(WorkerStartError):
    """A committed offset carries metadata the worker will not start over (see worker.foreign_offset_metadata)."""


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
            return PartitionTracker(committed)
        raise OffsetMetadataError(
            f"{where}: {exc}. cv-queue keeps the finished offsets above the committed one there, and running over "
            "metadata it cannot read could repeat paid work or publish results twice. If another tool committed "
            "this group, reset its offsets without metadata, or set CVQ_WORKER__FOREIGN_OFFSET_METADATA=ignore to "
            "start from the committed offset anyway.") from exc
    if settled is not None:
        log.info("%s[%d]: resuming at offset %d with %d offset(s) above it already done (up to %d)", tp.topic,
                 tp.partition, committed, settled.high - committed - len(settled.incomplete), settled.high)
    return PartitionTracker(committed, settled)


def resume_partitions(consumer: Consumer, settings: QueueSettings,
                      sources: list[tuple[str, int]]) -> dict[tuple[str, int], PartitionTracker[OutputRecord]]:
    """Assign `sources` at the worker group's committed offsets (the beginning where none is), with a tracker each
    that knows which offsets above them are already done."""
    trackers, assignment = {}, []
    for tp in committed_offsets(consumer, sources):
        log_end = None
        if getattr(tp, "metadata", None):  # a map to check against the log: only then is its end asked for
            log_end = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30)[1]
        trackers[(tp.topic, tp.partition)] = restore_tracker(tp, settings, log_end)
        assignment.append(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
    consumer.assign(assignment)
    return trackers


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
