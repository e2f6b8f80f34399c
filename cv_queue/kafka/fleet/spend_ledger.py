"""The spend ledger: what each worker has spent per window, in a compacted topic every worker and Dagster read.

Each worker publishes its own figures of the current window, a running total of its spend and what its calls in
flight may still cost, under the key `<worker>|<window>` of `<ns>.cv-queue-spend` (one partition,
`cleanup.policy=compact,delete`, segments rolled every window, kept for two): compaction keeps one record per
worker and window, and retention drops old windows. The fleet's spend in a window is the sum over keys. The worker
part of the key is unique per process (a restarted process in the same container, same host name and pid 1, must
not overwrite its predecessor's total). A worker that crashed leaves its last total behind, so its spend still
counts; what it spent after its last publication (at most `llm.spend.refresh_s` of calls) is lost, which the
limit's docs admit as overspend. Its reservations stop counting once they are older than three refreshes.

Not transactional on purpose: money spent at the provider is spent even when the transaction of the job's output
aborts, so the ledger counts calls, not committed results. Readers start at the previous window's first record
(by timestamp) and read to the end of the log as it was when they began, within a time limit.
"""

import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, Field

from cv_queue.kafka.admin.names import spend_reader_group, spend_topic
from cv_queue.kafka.admin.topics import ADMIN_TIMEOUT_S, ensure_compacted_topic
from cv_queue.kafka.client.clients import client_config
from cv_queue.settings import KafkaConnection, QueueSettings

READ_TIMEOUT_S = 20.0
#: Reservations of an entry not published again within this many refresh intervals no longer count (its worker
#: is gone, or cannot reach the broker).
FRESH_REFRESHES = 3


class SpendLedgerError(RuntimeError):
    """The spend ledger cannot be read or written."""


class SpendEntry(BaseModel, frozen=True):
    """One worker's running totals in one window."""

    worker: str
    window_start: int = Field(description="Unix seconds, aligned to llm.spend.window_s.")
    spent: float = Field(ge=0, description="What its answered calls cost in the window.")
    reserved: float = Field(0.0, ge=0, description="What its calls in flight may still cost (their worst case).")
    paused: bool = Field(False, description="The worker found the window spent and paused its intake.")
    at: float = Field(0.0, description="When it was published (Unix seconds).")

    @property
    def key(self) -> bytes:
        return f"{self.worker}|{self.window_start}".encode()


def ensure_spend_topic(admin: AdminClient, settings: QueueSettings) -> str:
    """Create the ledger topic if it is missing (one partition: one order; compacted, kept two windows)."""
    window_ms = settings.llm.spend.window_s * 1000
    config = {"cleanup.policy": "compact,delete", "retention.ms": str(2 * window_ms), "segment.ms": str(window_ms)}
    return ensure_compacted_topic(admin, spend_topic(settings), settings, config, SpendLedgerError, "spend ledger")


def decode_entry(value: bytes | None) -> SpendEntry | None:
    """An entry, or None for a tombstone or a record that is not one (the ledger is never trusted to be clean)."""
    if not value:
        return None
    try:
        return SpendEntry.model_validate_json(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class FleetSpend:
    """What the ledger says of one window: the fleet's spend, its fresh reservations, and whether any worker
    paused for it."""

    spent: float
    reserved: float
    paused: bool


@dataclass
class _Totals:
    by_key: dict[bytes, SpendEntry] = field(default_factory=dict)

    def take(self, msg: Message) -> None:
        """A ledger record: the latest entry of its key, or a tombstone that removes it."""
        key = msg.key()
        entry = decode_entry(msg.value())
        if entry is not None and key == entry.key:
            self.by_key[key] = entry
        elif key is not None:
            self.by_key.pop(key, None)

    def fleet(self, window_start: int, fresh_since: float, excluding: str | None = None) -> FleetSpend:
        entries = [e for e in self.by_key.values() if e.window_start == window_start and e.worker != excluding]
        return FleetSpend(sum(e.spent for e in entries), sum(e.reserved for e in entries if e.at >= fresh_since),
                          any(e.paused for e in entries))

    def forget_before(self, window_start: int) -> None:
        for key in [k for k, e in self.by_key.items() if e.window_start < window_start]:
            del self.by_key[key]


def _start_offset(consumer: Consumer, topic: str, since_s: int) -> TopicPartition:
    """Where the records of windows from `since_s` on begin (the log's end when there are none)."""
    asked = TopicPartition(topic, 0, since_s * 1000)
    found = consumer.offsets_for_times([asked], timeout=ADMIN_TIMEOUT_S)[0]
    if found.error is not None:
        raise SpendLedgerError(f"could not look up {topic} by time: {found.error}")
    if found.offset < 0:  # no record at or after that time
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=ADMIN_TIMEOUT_S)
        return TopicPartition(topic, 0, high)
    return TopicPartition(topic, 0, found.offset)


def _read_to_end(consumer: Consumer, topic: str, totals: _Totals, next_offset: int, timeout_s: float) -> int:
    """Read from `next_offset` what the log holds now (to its end when this begins), within `timeout_s`; the
    offset to go on from. Raises SpendLedgerError. (The last record is never compacted away, so the end is always
    reached by a record; one deleted by retention meanwhile moves the start past it.)"""
    deadline = time.monotonic() + timeout_s
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout_s)
    next_offset = max(next_offset, low)
    while next_offset < high:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SpendLedgerError(f"could not read {topic} to offset {high} within {timeout_s:.0f}s")
        for msg in consumer.consume(500, timeout=min(left, 1.0)):
            if msg.error() is None:
                totals.take(msg)
                next_offset = max(next_offset, msg.offset() + 1)
            elif msg.error().code() != KafkaError._PARTITION_EOF:
                raise SpendLedgerError(f"reading {topic}: {msg.error().str()}")
    return next_offset


class SpendLedger:
    """A worker's view of the ledger: it publishes its own totals and follows everybody's (one thread uses it)."""

    def __init__(self, conn: KafkaConnection, settings: QueueSettings, worker: str) -> None:
        self.topic = spend_topic(settings)
        self.worker = worker
        self._window_s = settings.llm.spend.window_s
        self._fresh_s = FRESH_REFRESHES * settings.llm.spend.refresh_s
        self._totals = _Totals()
        self._published: tuple[int, float, float, bool] | None = None
        self._producer = Producer({**client_config(conn, "spend-writer"), "enable.idempotence": True,
                                   "acks": "all", "linger.ms": 0})
        self._consumer = Consumer({**client_config(conn, "spend-reader"), "group.id": spend_reader_group(settings),
                                   "enable.auto.commit": False, "enable.partition.eof": False,
                                   "auto.offset.reset": "earliest"})
        since = settings.llm.spend.window_start(time.time()) - self._window_s
        start = _start_offset(self._consumer, self.topic, since)
        self._consumer.assign([start])
        self._next = start.offset

    def publish(self, window_start: int, spent: float, reserved: float, paused: bool) -> None:
        """Record this worker's totals for `window_start`: when they changed, or reservations need refreshing.
        Raises SpendLedgerError when the broker did not take them within the timeout."""
        if self._published == (window_start, spent, reserved, paused) and reserved == 0:
            return
        entry = SpendEntry(worker=self.worker, window_start=window_start, spent=spent, reserved=reserved,
                           paused=paused, at=time.time())
        errors: list[KafkaError] = []
        self._producer.produce(self.topic, key=entry.key, value=entry.model_dump_json().encode(),
                               on_delivery=lambda err, _msg: errors.append(err) if err is not None else None)
        if self._producer.flush(READ_TIMEOUT_S) > 0 or errors:
            raise SpendLedgerError(f"could not publish spend to {self.topic}: "
                                   f"{errors[0].str() if errors else 'timed out'}")
        self._published = (window_start, spent, reserved, paused)

    def refresh(self) -> None:
        """Read everything appended since the last call, up to the log's end now."""
        self._next = _read_to_end(self._consumer, self.topic, self._totals, self._next, READ_TIMEOUT_S)
        self._totals.forget_before(int(time.time()) // self._window_s * self._window_s - self._window_s)

    def others(self, window_start: int) -> FleetSpend:
        """What the rest of the fleet has spent and reserved in `window_start`, as last read."""
        return self._totals.fleet(window_start, time.time() - self._fresh_s, excluding=self.worker)

    def close(self) -> None:
        self._producer.flush(5)
        self._consumer.close()


def read_fleet_spend(conn: KafkaConnection, settings: QueueSettings, window_start: int,
                     timeout_s: float = READ_TIMEOUT_S) -> FleetSpend | None:
    """The fleet's spend in `window_start` (the sum of every worker's latest total), its fresh reservations, and
    whether any worker paused for it. None when the ledger topic does not exist (no worker with a spend limit has
    run). Reads only the window's records, within `timeout_s`; raises SpendLedgerError."""
    consumer = Consumer({**client_config(conn, "spend-check"), "group.id": spend_reader_group(settings),
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    name = spend_topic(settings)
    try:
        if name not in consumer.list_topics(timeout=ADMIN_TIMEOUT_S).topics:
            return None
        start = _start_offset(consumer, name, window_start)
        consumer.assign([start])
        totals = _Totals()
        _read_to_end(consumer, name, totals, start.offset, timeout_s)
        return totals.fleet(window_start, time.time() - FRESH_REFRESHES * settings.llm.spend.refresh_s)
    finally:
        consumer.close()
