"""Fencing across slot layouts: a worker stops every other worker that could be reading its partitions.

Fencing by transactional id only works between workers that share an id, i.e. the same slot of the same layout.
When `partitions_per_worker` changes while workers run (say 2 -> 4), the worker for `0-3` and the old one for `0-1`
have different ids and would both process partitions 0 and 1. So before a worker reads its committed offsets, it
initialises a transactional producer under the id of every slot, of every layout the topic could have had, that shares
a partition with its own. That bumps each id's epoch and aborts its open transaction: a live worker of another
layout is fenced on its next commit and exits without committing, exactly as a same-slot duplicate is. The worker
that started last owns the partitions; output stays exactly-once whatever the order.
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from cv_queue.kafka.client.clients import transactional_producer
from cv_queue.kafka.client.stall import WATCHDOG
from cv_queue.kafka.fleet.layout import Layout
from cv_queue.settings import KafkaConnection, QueueSettings, Slot

log = logging.getLogger("cv_queue.worker")

#: Fences run in parallel, each a producer and a coordinator round trip; bounded for large partition counts.
MAX_PARALLEL_FENCES = 16
#: init_transactions past its own timeout by this much is stuck in the client (client/stall.py).
FENCE_STALL_MARGIN_S = 60.0


def overlapping_slots(settings: QueueSettings, slot: Slot, earlier: list[Layout] | None = None) -> list[Slot]:
    """Every slot, other than `slot` itself, that a worker of another layout could hold over `slot`'s partitions.

    With the recorded history (`earlier`, from the layout record): the slots of those layouts, and of every
    `partitions_per_worker` that tiles the current count (a worker started with another width before any layout
    was recorded). Without it (None: a record from before the history was kept), every aligned run
    [k*w, (k+1)*w) that ends within the current count, for every width w: the topic only grows, so that covers any
    earlier layout (12 partitions in threes, grown to 16 in fours, included).
    """
    partitions = settings.topics.partitions
    if earlier is None:
        widths = [(w, partitions) for w in range(1, partitions + 1)]
    else:
        widths = [(w, partitions) for w in range(1, partitions + 1) if partitions % w == 0]
        widths += [(old.partitions_per_worker, old.partitions) for old in earlier]
    mine = set(slot.partitions)
    found: dict[Slot, None] = {}  # ordered and without repeats
    for width, within in widths:
        first = (min(mine) // width) * width
        for start in range(first, max(mine) + 1, width):
            other = Slot(partitions=tuple(range(start, start + width)))
            if start + width <= min(within, partitions) and other != slot:
                found[other] = None
    return list(found)


def _fence(conn: KafkaConnection, txn_id: str, timeout_s: float) -> str:
    producer = transactional_producer(conn, txn_id)
    try:
        with WATCHDOG.watch(f"init_transactions of {txn_id} (fencing)", timeout_s + FENCE_STALL_MARGIN_S):
            producer.init_transactions(timeout_s)
    finally:
        producer.flush(0)
    return txn_id


def fence_overlapping_slots(conn: KafkaConnection, settings: QueueSettings, slot: Slot, timeout_s: float,
                            earlier: list[Layout] | None = None) -> list[str]:
    """Fence the transactional ids of overlapping slots, all at once (each takes a coordinator round trip of a
    few hundred ms); returns the ids fenced."""
    ids = [settings.transactional_id(other) for other in overlapping_slots(settings, slot, earlier)]
    if not ids:
        return []
    deadline = time.monotonic() + timeout_s  # one budget for all of them, however many run at a time

    def fence(txn_id: str) -> str:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"fencing {txn_id}: no time left of the {timeout_s:.0f}s start-up budget")
        return _fence(conn, txn_id, remaining)

    pool = ThreadPoolExecutor(max_workers=min(len(ids), MAX_PARALLEL_FENCES), thread_name_prefix="cvq-fence")
    try:
        fenced = list(pool.map(fence, ids))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a failure, the queued fences are not started
    if fenced:
        log.info("slot %s: fenced any worker of another layout on its partitions (%s)", slot.name, ", ".join(fenced))
    return fenced
