"""Fencing across slot layouts: a worker stops every other worker that could be reading its partitions.

Fencing by transactional id only works between workers that share an id, i.e. the same slot of the same layout.
When `partitions_per_worker` changes while workers run (say 2 -> 4), the worker for `0-3` and the old one for `0-1`
have different ids and would both process partitions 0 and 1. So before a worker reads its committed offsets, it
initialises a transactional producer under the id of every slot, in every layout that tiles the topic, that shares
a partition with its own. That bumps each id's epoch and aborts its open transaction: a live worker of another
layout is fenced on its next commit and exits without committing, exactly as a same-slot duplicate is. The worker
that started last owns the partitions; output stays exactly-once whatever the order.
"""

import logging
from concurrent.futures import ThreadPoolExecutor

from cv_queue.kafka.clients import transactional_producer
from cv_queue.settings import KafkaConnection, QueueSettings, Slot

log = logging.getLogger("cv_queue.worker")


def layouts(partitions: int) -> list[int]:
    """Every partitions-per-worker value that tiles `partitions` (the layouts a deployment could be using)."""
    return [n for n in range(1, partitions + 1) if partitions % n == 0]


def overlapping_slots(settings: QueueSettings, slot: Slot) -> list[Slot]:
    """The slots of every layout, other than `slot` itself, that share a partition with it."""
    mine = set(slot.partitions)
    found = []
    for per_worker in layouts(settings.topics.partitions):
        for start in range(0, settings.topics.partitions, per_worker):
            other = Slot(partitions=tuple(range(start, start + per_worker)))
            if other != slot and mine & set(other.partitions):
                found.append(other)
    return found


def _fence(conn: KafkaConnection, txn_id: str, timeout_s: float) -> str:
    producer = transactional_producer(conn, txn_id)
    try:
        producer.init_transactions(timeout_s)
    finally:
        producer.flush(0)
    return txn_id


def fence_overlapping_slots(conn: KafkaConnection, settings: QueueSettings, slot: Slot, timeout_s: float) -> list[str]:
    """Fence the transactional ids of overlapping slots, all at once (each takes a coordinator round trip of a
    few hundred ms); returns the ids fenced."""
    ids = [settings.transactional_id(other) for other in overlapping_slots(settings, slot)]
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=len(ids), thread_name_prefix="cvq-fence") as pool:
        fenced = list(pool.map(lambda txn_id: _fence(conn, txn_id, timeout_s), ids))
    if fenced:
        log.info("slot %s: fenced any worker of another layout on its partitions (%s)", slot.name, ", ".join(fenced))
    return fenced
