"""The recorded worker layout: how many partitions the queue has and how many each worker slot owns.

Worker slots are derived from settings (CVQ_TOPICS__PARTITIONS, CVQ_TOPICS__PARTITIONS_PER_WORKER), and settings
are per process. A worker started with the settings of another layout would read partitions that the fleet of the
recorded layout also reads (fencing keeps the output exactly-once, but two fleets would fence each other in turn),
or leave partitions of a grown topic unread. So the layout is recorded once, in the broker, next to the topics: one
record under one key of a compacted topic `<ns>.cv-queue-layout` (the DLQ layout is
recorded there too, under a key of its own: dlq_layout.py). A worker checks it at start (join.py) and
refuses to run a layout other than the recorded one; `cv-queue fleet relayout` / `relayout_worker_fleet` are the
only writers after the first start, which records the settings it finds (`record_first_layout`).
"""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, Field

from cv_queue.kafka.admin.names import layout_reader_group, layout_topic
from cv_queue.kafka.admin.topics import ADMIN_TIMEOUT_S, ensure_compacted_topic
from cv_queue.kafka.client.auth import authorization_code, denied
from cv_queue.kafka.client.clients import admin_client, client_config
from cv_queue.settings import KafkaConnection, QueueSettings, Slot

LAYOUT_KEY = b"layout"
READ_TIMEOUT_S = 30.0


class LayoutError(RuntimeError):
    """The layout record cannot be read or written."""


class Layout(BaseModel, frozen=True):
    """A topic layout: partitions of the main and retry topics, and how many of them one worker slot owns."""

    partitions: int = Field(ge=1)
    partitions_per_worker: int = Field(ge=1)

    @classmethod
    def of(cls, settings: QueueSettings) -> "Layout":
        return cls(partitions=settings.topics.partitions, partitions_per_worker=settings.topics.partitions_per_worker)

    def apply(self, settings: QueueSettings) -> QueueSettings:
        """`settings` with this layout's partition counts (everything else unchanged)."""
        topics = settings.topics.model_copy(update={"partitions": self.partitions,
                                                    "partitions_per_worker": self.partitions_per_worker})
        return settings.model_copy(update={"topics": topics})

    def slots(self) -> list[Slot]:
        step = self.partitions_per_worker
        return [Slot(partitions=tuple(range(i, i + step))) for i in range(0, self.partitions, step)]

    def describe(self) -> str:
        names = [s.name for s in self.slots()]
        shown = ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {names[-1]}"
        return (f"{self.partitions} partitions, {self.partitions_per_worker} per worker "
                f"({len(names)} slots: {shown})")

    def env(self) -> str:
        """The environment that gives a process this layout."""
        return (f"CVQ_TOPICS__PARTITIONS={self.partitions} "
                f"CVQ_TOPICS__PARTITIONS_PER_WORKER={self.partitions_per_worker}")


class LayoutRecord(Layout, frozen=True):
    """The recorded layout: which generation (1 = the first start, +1 per re-layout) and when it was written."""

    generation: int = Field(ge=1)
    at: datetime
    # Every layout recorded before this one: a worker fences the slots of these (fencing.py), not of every layout
    # the topic could have had. Records written before this field existed read as "unknown history" (None).
    earlier: list[Layout] | None = None

    @property
    def layout(self) -> Layout:
        return Layout(partitions=self.partitions, partitions_per_worker=self.partitions_per_worker)


def ensure_layout_topic(admin: AdminClient, settings: QueueSettings) -> str:
    """Create the layout topic if it is missing: one partition (one key, one total order), compacted (only the
    latest record matters, and compaction keeps it forever), replicated like the queue's topics."""
    return ensure_compacted_topic(admin, layout_topic(settings), settings, {"cleanup.policy": "compact"},
                                  LayoutError, "layout")


def read_latest(conn: KafkaConnection, settings: QueueSettings, key: bytes) -> bytes | None:
    """The latest value recorded under `key` in the layout topic (which must exist), or None when there is none.

    The topic holds more than one record kind (the worker layout, the DLQ layout: dlq_layout.py), one key each."""
    values = [value for _key, value in read_records(conn, settings, lambda k: k == key, key.decode())]
    return values[-1] if values else None


def read_records(conn: KafkaConnection, settings: QueueSettings, wanted: Callable[[bytes | None], bool],
                 what: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record of the layout topic (which must exist) whose key is `wanted`, in offset order
    (tombstones left out). Compaction only drops a record that a later one of the same key supersedes; it never
    reorders."""
    name = layout_topic(settings)
    consumer = Consumer({**client_config(conn, "layout-reader"), "group.id": layout_reader_group(settings),
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        low, high = _log_bounds(consumer, name, deadline)
        if high <= low:
            return []
        consumer.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
        found: list[tuple[bytes, bytes]] = []
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return found
                if _transient(msg.error()):
                    continue
                raise LayoutError(f"reading {name}: {msg.error().str()}") from KafkaException(msg.error())
            if wanted(msg.key()) and msg.value():
                found.append((msg.key(), msg.value()))
        raise LayoutError(f"could not read the {what} record from {name} within {READ_TIMEOUT_S:.0f}s")
    finally:
        consumer.close()


#: Errors of a topic that a node does not serve yet: on a cluster, the node asked may learn of a topic created a
#: moment ago (by another worker starting at the same time) after the node that acknowledged it.
_NOT_SERVED_YET = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
                             KafkaError.LEADER_NOT_AVAILABLE,
                             KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._TIMED_OUT, KafkaError._TRANSPORT})


def _transient(error: KafkaError) -> bool:
    return error.code() in _NOT_SERVED_YET


def _log_bounds(consumer: Consumer, name: str, deadline: float) -> tuple[int, int]:
    """The layout topic's log start and end, asked again while the node is not serving it yet (until `deadline`)."""
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(name, 0),
                                                  timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        except KafkaException as exc:
            if not _transient(exc.args[0]) or time.monotonic() > deadline:
                raise LayoutError(f"could not read the log bounds of {name}: {exc.args[0].str()}") from exc
            time.sleep(0.5)


def read_layout(conn: KafkaConnection, settings: QueueSettings) -> LayoutRecord | None:
    """The latest layout record, or None when none was ever written (the topic must exist)."""
    value = read_latest(conn, settings, LAYOUT_KEY)
    return None if value is None else LayoutRecord.model_validate_json(value)


def append_record(conn: KafkaConnection, settings: QueueSettings, key: bytes, value: bytes, what: str) -> None:
    """Append one record to the layout topic (idempotent producer, acks=all: written once, durable, or an error
    naming `what`)."""
    producer = Producer({**client_config(conn, "layout-writer"), "enable.idempotence": True, "acks": "all"})
    errors: list[KafkaError] = []
    done = threading.Event()

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)
        done.set()

    producer.produce(layout_topic(settings), key=key, value=value, on_delivery=delivered)
    producer.flush(READ_TIMEOUT_S)
    if errors or not done.is_set():
        raise LayoutError(f"could not record {what}: {errors[0].str() if errors else 'no acknowledgement'}"
                          ) from (KafkaException(errors[0]) if errors else None)


def write_layout(conn: KafkaConnection, settings: QueueSettings, layout: Layout, generation: int,
                 earlier: list[Layout] | None = None) -> LayoutRecord:
    """Append a layout record (idempotent producer, acks=all: written once, durable, or an error). `earlier`: the
    layouts recorded before it (None: not known)."""
    record = LayoutRecord(partitions=layout.partitions, partitions_per_worker=layout.partitions_per_worker,
                          generation=generation, at=datetime.now(UTC).replace(microsecond=0), earlier=earlier)
    append_record(conn, settings, LAYOUT_KEY, record.model_dump_json().encode(), f"the layout {layout.describe()}")
    return record


@contextlib.contextmanager
def denials_named(conn: KafkaConnection, settings: QueueSettings) -> Iterator[None]:
    """An authorization error on the layout topic becomes KafkaAuthorizationError naming it."""
    try:
        yield
    except (KafkaException, LayoutError) as exc:
        cause = exc if isinstance(exc, KafkaException) else exc.__cause__
        if not isinstance(cause, KafkaException) or authorization_code(cause) is None:
            raise
        raise denied(cause, conn, layout_topic(settings), "DESCRIBE, CREATE, READ or WRITE") from exc


def ensure_layout_topic_as(conn: KafkaConnection, settings: QueueSettings) -> str:
    """ensure_layout_topic with `conn`'s principal, a missing ACL named."""
    with denials_named(conn, settings):
        return ensure_layout_topic(admin_client(conn), settings)


class FirstLayoutConflictError(LayoutError):
    """Nothing is recorded yet, and the settings' partition count is not the topics': nothing was recorded."""


def record_first_layout(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings,
                        live_partitions: int | None = None) -> LayoutRecord:
    """The recorded layout; on the very first start (nothing recorded) the settings' layout is recorded first,
    unless the topics' `live_partitions` says otherwise (then FirstLayoutConflictError, and nothing is written: a
    worker started with wrong settings must not record them for everyone).

    Two first starts racing write the same generation; the latest record wins, and a worker whose layout lost
    is refused by the check that follows, like any worker of another layout.

    A principal without the layout topic's ACLs gets KafkaAuthorizationError naming the topic (the CLI's exit 7,
    Dagster's access failure), not a LayoutError that says nothing of ACLs.
    """
    with denials_named(conn, settings):
        ensure_layout_topic(admin, settings)
        recorded = read_layout(conn, settings)
        if recorded is not None:
            return recorded
        mine = Layout.of(settings)
        if live_partitions is not None and live_partitions != mine.partitions:
            raise FirstLayoutConflictError(
                f"no layout is recorded yet and this worker's settings give {mine.describe()}, but the topics have "
                f"{live_partitions} partitions; nothing was recorded. Start the workers with "
                f"CVQ_TOPICS__PARTITIONS={live_partitions}.")
        write_layout(conn, settings, mine, generation=1, earlier=[])
    recorded = read_layout(conn, settings)
    if recorded is None:
        raise LayoutError(f"the layout record written to {layout_topic(settings)} cannot be read back")
    return recorded


def adopt_recorded_layout(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings) -> QueueSettings:
    """`settings` with the recorded layout (or unchanged when none is recorded yet): what a worker launched by the
    fleet, rather than by hand, runs with, so that a re-layout needs no change of environment."""
    name = layout_topic(settings)
    if name not in admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics:
        return settings
    recorded = read_layout(conn, settings)
    return settings if recorded is None else recorded.layout.apply(settings)
