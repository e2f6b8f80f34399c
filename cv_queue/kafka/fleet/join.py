"""Joining the fleet: a worker is seen alive (presence.py) before it checks its settings' layout against the
recorded one (layout.py), and checks it again after fencing, before it reads any offset.

Both checks refuse with LayoutMismatchError (`cv-queue worker` exits with 9); any other reason a worker cannot start
is a WorkerStartError. The worker's own start-up checks (its topics, size limits and committed offsets) are
cv_queue/kafka/worker/startup.py's.
"""

import time

from confluent_kafka.admin import AdminClient

from cv_queue.kafka.admin.names import layout_topic, presence_group
from cv_queue.kafka.client.auth import denied
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.layout import (
    FirstLayoutConflictError,
    Layout,
    LayoutRecord,
    ensure_layout_topic_as,
    read_layout,
    record_first_layout,
)
from cv_queue.kafka.fleet.presence import FleetPresence
from cv_queue.settings import KafkaConnection, QueueSettings, Slot

START_TIMEOUT_S = 60.0
METADATA_RETRIES = 3  # a partition count that disagrees with the layout record is read again this often


class WorkerStartError(RuntimeError):
    """The worker cannot start: topics missing, partitions absent, broker unreachable."""


class LayoutMismatchError(WorkerStartError):
    """The worker's settings describe another layout than the recorded one (`cv-queue worker` exits with 9)."""


def _live_partitions(admin: AdminClient, settings: QueueSettings) -> dict[str, int]:
    """Partition counts of the topics a slot reads (main, interactive, retry), as the metadata gives them."""
    metadata = admin.list_topics(timeout=START_TIMEOUT_S)
    names = settings.topic_names.consumed
    return {t: len(m.partitions) for t in names if (m := metadata.topics.get(t)) is not None and m.error is None}


def check_layout(conn: KafkaConnection, settings: QueueSettings) -> LayoutRecord:
    """Refuse to run a layout other than the recorded one (recording the settings' layout on the first start, if the
    topics agree with it)."""
    admin = admin_client(conn)
    mine = Layout.of(settings)
    live = _live_partitions(admin, settings)
    try:
        recorded = record_first_layout(conn, admin, settings, live.get(settings.topic_names.main))
    except FirstLayoutConflictError as exc:
        raise LayoutMismatchError(str(exc)) from exc
    # The record and the topics must agree: a re-layout that failed between growing the topics and recording, or
    # a topic grown outside it, would leave partitions that no slot of the recorded layout reads. A broker whose
    # metadata lags a moment behind a grow is asked again before refusing.
    for _ in range(METADATA_RETRIES):
        wrong = {t: n for t, n in live.items() if n != recorded.layout.partitions}
        if not wrong:
            break
        time.sleep(1.0)
        live = _live_partitions(admin, settings)
    for topic, count in live.items():
        if count != recorded.layout.partitions:
            raise LayoutMismatchError(
                f"{topic} has {count} partitions but the recorded layout (generation "
                f"{recorded.generation}) is {recorded.layout.describe()}: a re-layout did not finish, or the topic was "
                f"grown outside one. Run `cv-queue fleet relayout --partitions {count}` (or the "
                "relayout_worker_fleet job) to record the layout the topics have.")
    if recorded.layout != mine:
        raise LayoutMismatchError(
            f"this worker's settings give {mine.describe()}, but the queue's recorded layout (generation "
            f"{recorded.generation}, {recorded.at.isoformat()}, in {layout_topic(settings)}) is "
            f"{recorded.layout.describe()}. Start the workers with the recorded layout ({recorded.layout.env()}); "
            "to change the layout, stop every worker and run `cv-queue fleet relayout --partitions N "
            "[--per-worker K]` (or the relayout_worker_fleet job in Dagster).")
    return recorded


def recheck_layout(conn: KafkaConnection, settings: QueueSettings, recorded: LayoutRecord) -> None:
    """After init_transactions, before reading committed offsets: the layout must still be the one checked at join.

    A re-layout that finished in between may have started a worker of the new layout, which fenced the slots of
    the old one *before* this worker's init_transactions gave its old slot a fresh epoch: nothing would fence this
    worker again, and two workers would read the same partitions. The record tells (LayoutMismatchError)."""
    now = read_layout(conn, settings)
    if now is None or now.generation != recorded.generation or now.layout != recorded.layout:
        now_text = "no record" if now is None else f"generation {now.generation}, {now.layout.describe()}"
        raise LayoutMismatchError(
            f"the queue's layout changed while this worker started (it joined under generation "
            f"{recorded.generation}, {recorded.layout.describe()}; the record now says {now_text}). It stops "
            f"before reading any offset; start the workers with the recorded layout.")


def join_fleet(conn: KafkaConnection, settings: QueueSettings,
               slot: Slot) -> tuple[FleetPresence, LayoutRecord]:
    """Join the presence group, then check the layout; returns the membership, which the caller closes (closed
    here when the layout check refuses), and the layout record.

    Seen alive by a re-layout *before* reading the layout: a re-layout that checks liveness after this point sees
    this worker and refuses. One that checked before may still be growing the topics; a worker of the old layout
    that starts then runs until a worker of the new one fences it (the old layout is in the record's history).
    """
    ensure_layout_topic_as(conn, settings)  # what the presence consumer subscribes to
    presence = FleetPresence(conn, settings, slot)
    try:
        if not presence.wait_joined(START_TIMEOUT_S):
            if presence.denial is not None:
                raise denied(presence.denial, conn, f"{presence_group(settings)} (group) or {layout_topic(settings)}",
                             "READ")
            raise WorkerStartError(f"worker for slot {slot.name} could not join the presence group "
                                   f"{presence_group(settings)} within {START_TIMEOUT_S:.0f}s (a re-layout could not "
                                   "see it); check the broker and the worker's group ACLs")
        recorded = check_layout(conn, settings)
    except BaseException:
        presence.close()
        raise
    return presence, recorded
