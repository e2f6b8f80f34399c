"""Re-layout: grow the queue's partitions and change the worker slots, as one checked operation.

The steps, each reported through `progress`:
1. read the recorded layout (layout.py) and check the target: a multiple of the slot width, never fewer
   partitions (Kafka cannot remove partitions, and their records would be lost);
2. wait until no worker is alive (presence.py), and refuse, naming them, if one still is after `wait_s`: a worker
   of the old layout must not read on while the topics grow and the slots change under it;
3. grow the main, interactive, retry and results topics through the same provisioning code as `cv-queue topics
   provision` (admin/topics.py), which also refuses to shrink;
4. record the new layout, so that every worker started from now on checks it (join.py).
Stopping the fleet before step 2 and starting it after step 4 belong to whoever runs workers: the Dagster job
sets and clears the fleet's stop flag around this; from the CLI the operator stops and starts the processes.

Keys hash to other partitions once a topic has more of them (murmur2 modulo the partition count), so per-key order
is only promised within a layout. Records already queued stay where they are: the new layout's slots cover every
old partition (they are numbered from 0 and only ever grow) and resume from the worker group's committed offsets,
so each queued job is still processed exactly once.
"""

import time
from collections.abc import Callable

from confluent_kafka.admin import AdminClient

from cv_queue.kafka.admin.names import presence_group
from cv_queue.kafka.admin.topics import ProvisionReport, describe_topics, provision, topic_specs
from cv_queue.kafka.fleet.layout import Layout, LayoutRecord, read_layout, record_first_layout, write_layout
from cv_queue.kafka.fleet.presence import LiveWorker, live_workers
from cv_queue.settings import KafkaConnection, QueueSettings

Progress = Callable[[str], None]
LIVENESS_POLL_S = 1.0


class RelayoutRefusedError(RuntimeError):
    """The re-layout was refused (a worker is alive, or the target layout is impossible); nothing was changed."""


def target_layout(current: Layout, partitions: int, per_worker: int | None) -> Layout:
    """The layout asked for (slot width unchanged unless given), or a refusal saying why it cannot be."""
    width = per_worker or current.partitions_per_worker
    if partitions < 1 or width < 1 or partitions % width:
        raise RelayoutRefusedError(f"{partitions} partitions cannot be split into slots of {width} partitions: the "
                                   "partition count must be a multiple of the partitions per worker")
    if partitions < current.partitions:
        raise RelayoutRefusedError(f"the queue has {current.partitions} partitions and Kafka cannot remove "
                                   f"partitions; a re-layout can only grow it (asked for {partitions})")
    return Layout(partitions=partitions, partitions_per_worker=width)


def wait_until_no_worker_alive(admin: AdminClient, settings: QueueSettings, wait_s: float,
                               progress: Progress) -> None:
    """Return once no worker is alive; refuse, naming the ones that are, when `wait_s` passes first."""
    deadline = time.monotonic() + wait_s
    alive: list[LiveWorker] = live_workers(admin, settings)
    if alive:
        progress(f"waiting up to {wait_s:.0f}s for {len(alive)} live worker(s) to commit and stop")
    while alive and time.monotonic() < deadline:
        time.sleep(LIVENESS_POLL_S)
        alive = live_workers(admin, settings)
    if alive:
        raise RelayoutRefusedError(
            f"{len(alive)} worker(s) of the current layout are still alive (members of {presence_group(settings)}): "
            f"{'; '.join(w.describe() for w in alive)}. Stop them first (SIGTERM; they commit and exit), or "
            "stop_worker_fleet in Dagster, then run the re-layout again. Nothing was changed.")
    progress("no worker is alive: every slot has committed and ended")


def grow_topics(admin: AdminClient, settings: QueueSettings, target: Layout, progress: Progress) -> ProvisionReport:
    """Provision every topic with the target's partition count (the DLQ and parking lot do not change)."""
    report = provision(admin, topic_specs(target.apply(settings)))
    for topic in report.topics:
        if topic.partitions_before is not None and topic.partitions_before != topic.partitions:
            progress(f"grew {topic.name} from {topic.partitions_before} to {topic.partitions} partitions")
        else:
            progress(f"{topic.name}: {topic.partitions} partitions ({topic.action})")
    return report


def relayout(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings, partitions: int,
             per_worker: int | None, wait_s: float, progress: Progress) -> LayoutRecord:
    """Run steps 1-4 (see the module docstring); returns the layout recorded at the end."""
    current = record_first_layout(conn, admin, settings)
    progress(f"recorded layout: {current.layout.describe()} (generation {current.generation})")
    target = target_layout(current.layout, partitions, per_worker)
    live_main = describe_topics(admin, [settings.topic_names.main]).get(settings.topic_names.main)
    if live_main is not None and live_main.partitions > target.partitions:
        raise RelayoutRefusedError(f"{settings.topic_names.main} already has {live_main.partitions} partitions, "
                                   f"more than the {target.partitions} asked for; Kafka cannot remove partitions")
    if target == current.layout and live_main is not None and live_main.partitions == target.partitions:
        progress("the queue already has this layout: nothing to do")
        return current
    progress(f"target layout: {target.describe()}")
    wait_until_no_worker_alive(admin, settings, wait_s, progress)
    grow_topics(admin, settings, target, progress)
    # The history that lets workers fence only the slots that existed; unknown stays unknown (fence every width).
    earlier = None if current.earlier is None else [*current.earlier, current.layout]
    write_layout(conn, settings, target, current.generation + 1, earlier)
    recorded = read_layout(conn, settings)
    if recorded is None or recorded.layout != target:
        raise RelayoutRefusedError(f"the layout record was overwritten meanwhile (now {recorded}); run it again")
    progress(f"recorded the new layout (generation {recorded.generation}): workers of any other layout now refuse "
             f"to start; start the new fleet with {target.env()}")
    return recorded
