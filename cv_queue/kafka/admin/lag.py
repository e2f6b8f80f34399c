"""End offsets, committed offsets and lag per partition, read with the AdminClient only.

Cheap enough for a sensor tick: a few metadata-sized requests, no message bodies. End offsets are read
`read_committed`, so an open transaction's records are not counted as lag before they are visible.
"""

import time

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from pydantic import BaseModel

REQUEST_TIMEOUT_S = 5.0  # small: sensors make up to ten of these calls inside a 60 s tick


class PartitionLag(BaseModel):
    topic: str
    partition: int
    end_offset: int
    committed: int | None  # None: the group never committed this partition
    lag: int


def partition_count(admin: AdminClient, topic: str) -> int:
    meta = admin.list_topics(topic, timeout=REQUEST_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None:
        raise KafkaException(meta.error if meta is not None else f"topic {topic} not found")
    return len(meta.partitions)


def end_offsets(admin: AdminClient, topic: str, partitions: list[int]) -> dict[int, int]:
    futures = admin.list_offsets(
        {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
        isolation_level=IsolationLevel.READ_COMMITTED,
        request_timeout=REQUEST_TIMEOUT_S,
    )
    return {tp.partition: fut.result().offset for tp, fut in futures.items()}


def offsets_before(admin: AdminClient, topic: str, partitions: list[int], timestamp_ms: int) -> dict[int, int]:
    """Per partition, the first offset whose timestamp is >= timestamp_ms (the end offset if none)."""
    futures = admin.list_offsets(
        {TopicPartition(topic, p): OffsetSpec.for_timestamp(timestamp_ms) for p in partitions},
        isolation_level=IsolationLevel.READ_COMMITTED,
        request_timeout=REQUEST_TIMEOUT_S,
    )
    found = {tp.partition: fut.result().offset for tp, fut in futures.items()}
    missing = [p for p, off in found.items() if off < 0]
    if missing:  # no record that new: everything up to the end is older
        found.update(end_offsets(admin, topic, missing))
    return found


def retained_offsets(admin: AdminClient, topic: str, partitions: list[int]) -> dict[int, int]:
    """Per partition, the offsets from the earliest retained record to the end: the depth of a topic nobody
    consumes (the parking lot). An upper bound on records, as transaction markers take offsets too."""
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.earliest() for p in partitions},
                                 request_timeout=REQUEST_TIMEOUT_S)
    earliest = {tp.partition: fut.result().offset for tp, fut in futures.items()}
    ends = end_offsets(admin, topic, partitions)
    return {p: max(0, ends[p] - earliest[p]) for p in partitions}


def committed_offsets(admin: AdminClient, group: str, topic: str, partitions: list[int],
                      settle_s: float = 5.0) -> dict[int, int | None]:
    """The group's committed offset per partition (None: nothing committed).

    A partition whose offset commit is still pending in a transaction comes back with an error
    (UNSTABLE_OFFSET_COMMIT) and no offset. Reading that as "nothing committed" would report the whole partition as
    lag, so the read is repeated for up to `settle_s` (a commit settles in milliseconds) and then the error raised.
    """
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    give_up = time.monotonic() + settle_s
    while True:
        future = admin.list_consumer_group_offsets([request], require_stable=True,
                                                   request_timeout=REQUEST_TIMEOUT_S)[group]
        result = future.result()
        failed = [tp for tp in result.topic_partitions if tp.error is not None]
        if not failed:
            return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in result.topic_partitions}
        settling = all(tp.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT for tp in failed)
        if not settling or time.monotonic() >= give_up:  # any other error is not going to settle by waiting
            raise KafkaException(failed[0].error)
        time.sleep(0.2)


def group_lag(admin: AdminClient, group: str, topic: str, partitions: list[int] | None = None) -> list[PartitionLag]:
    """Lag of `group` on every (or the given) partition of `topic`."""
    if partitions is None:
        partitions = list(range(partition_count(admin, topic)))
    ends = end_offsets(admin, topic, partitions)
    committed = committed_offsets(admin, group, topic, partitions)
    return [
        PartitionLag(topic=topic, partition=p, end_offset=ends[p], committed=committed.get(p),
                     lag=max(0, ends[p] - (committed.get(p) or 0)))
        for p in partitions
    ]
