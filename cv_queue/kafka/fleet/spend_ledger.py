"""The spend ledger: what each worker has spent per window, in a compacted topic every worker and Dagster read.

Each worker publishes its own spend of the current window, a running total, under the key `<worker>|<window>` of
`<ns>.cv-queue-spend` (one partition, `cleanup.policy=compact,delete`, kept for two windows): compaction keeps one
record per worker and window, and retention drops old windows. The fleet's spend in a window is the sum over keys.
A worker that crashed leaves its last total behind, so its spend still counts; what it spent after its last
publication (at most `llm.spend.refresh_s` of calls) is lost, which the limit's docs admit as overspend.

Not transactional on purpose: money spent at the provider is spent even when the transaction of the job's output
aborts, so the ledger counts calls, not committed results.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, Field

from cv_queue.kafka.admin.names import spend_reader_group, spend_topic
from cv_queue.kafka.admin.topics import ADMIN_TIMEOUT_S, ensure_compacted_topic
from cv_queue.kafka.client.clients import client_config
from cv_queue.settings import KafkaConnection, QueueSettings

READ_TIMEOUT_S = 30.0


class SpendLedgerError(RuntimeError):
    """The spend ledger cannot be read or written."""


class SpendEntry(BaseModel, frozen=True):
    """One worker's running total in one window."""

    worker: str
    window_start: int = Field(description="Unix seconds, aligned to llm.spend.window_s.")
    spent: float = Field(ge=0)
    paused: bool = Field(False, description="The worker found the window spent and paused its intake.")

    @property
    def key(self) -> bytes:
        return f"{self.worker}|{self.window_start}".encode()


def ensure_spend_topic(admin: AdminClient, settings: QueueSettings) -> str:
    """Create the ledger topic if it is missing (one partition: one order; compacted, kept two windows)."""
    config = {"cleanup.policy": "compact,delete", "retention.ms": str(2 * settings.llm.spend.window_s * 1000)}
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
    """What the ledger says of one window: the fleet's spend, and whether any worker paused for it."""

    spent: float
    paused: bool


@dataclass
class _Totals:
    by_key: dict[bytes, SpendEntry]

    def fleet(self, window_start: int, excluding: str | None = None) -> FleetSpend:
        entries = [e for e in self.by_key.values() if e.window_start == window_start and e.worker != excluding]
        return FleetSpend(sum(e.spent for e in entries), any(e.paused for e in entries))


class SpendLedger:
    """A worker's view of the ledger: it publishes its own totals and follows everybody's (one thread uses it)."""

    def __init__(self, conn: KafkaConnection, settings: QueueSettings, worker: str) -> None:
        self.topic = spend_topic(settings)
        self.worker = worker
        self._totals = _Totals({})
        self._published: dict[int, tuple[float, bool]] = {}
        self._producer = Producer({**client_config(conn, "spend-writer"), "enable.idempotence": True,
                                   "acks": "all", "linger.ms": 0})
        self._consumer = Consumer({**client_config(conn, "spend-reader"), "group.id": spend_reader_group(settings),
                                   "enable.auto.commit": False, "enable.partition.eof": False})
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])

    def publish(self, window_start: int, spent: float, paused: bool) -> None:
        """Record this worker's total for `window_start` (skipped when unchanged); raises SpendLedgerError when the
        broker did not take it within the timeout."""
        if self._published.get(window_start) == (spent, paused):
            return
        entry = SpendEntry(worker=self.worker, window_start=window_start, spent=spent, paused=paused)
        errors: list[KafkaError] = []
        self._producer.produce(self.topic, key=entry.key, value=entry.model_dump_json().encode(),
                               on_delivery=lambda err, _msg: errors.append(err) if err is not None else None)
        if self._producer.flush(READ_TIMEOUT_S) > 0 or errors:
            raise SpendLedgerError(f"could not publish spend to {self.topic}: "
                                   f"{errors[0].str() if errors else 'timed out'}")
        self._published = {window_start: (spent, paused)}

    def refresh(self, max_records: int = 10_000) -> None:
        """Read what was appended since the last call (without waiting for more)."""
        for msg in self._drain(max_records):
            entry = decode_entry(msg.value())
            if entry is not None and msg.key() == entry.key:
                self._totals.by_key[entry.key] = entry
            elif msg.key() is not None:
                self._totals.by_key.pop(msg.key(), None)

    def _drain(self, max_records: int) -> Iterator:
        while max_records > 0:
            batch = self._consumer.consume(min(500, max_records), timeout=0.2)
            if not batch:
                return
            max_records -= len(batch)
            for msg in batch:
                if msg.error() is None:
                    yield msg
                elif msg.error().code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    raise SpendLedgerError(f"reading {self.topic}: {msg.error().str()}")

    def others(self, window_start: int) -> float:
        """What the rest of the fleet has spent in `window_start`, as last read."""
        return self._totals.fleet(window_start, excluding=self.worker).spent

    def close(self) -> None:
        self._producer.flush(5)
        self._consumer.close()


def read_fleet_spend(conn: KafkaConnection, settings: QueueSettings, window_start: int) -> FleetSpend | None:
    """The fleet's spend in `window_start` (the sum of every worker's latest total), and whether any worker paused
    for it. None when the ledger topic does not exist (no worker with a spend limit has run)."""
    consumer = Consumer({**client_config(conn, "spend-check"), "group.id": spend_reader_group(settings),
                         "enable.auto.commit": False, "enable.partition.eof": True})
    name = spend_topic(settings)
    try:
        if name not in consumer.list_topics(timeout=ADMIN_TIMEOUT_S).topics:
            return None
        low, high = consumer.get_watermark_offsets(TopicPartition(name, 0), timeout=ADMIN_TIMEOUT_S)
        totals = _Totals({})
        if high <= low:
            return FleetSpend(0.0, False)
        consumer.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
        while True:
            msg = consumer.poll(READ_TIMEOUT_S)
            if msg is None:
                raise SpendLedgerError(f"could not read {name} to its end within {READ_TIMEOUT_S:.0f}s")
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return totals.fleet(window_start)
                raise SpendLedgerError(f"reading {name}: {msg.error().str()}")
            entry = decode_entry(msg.value())
            if entry is not None:
                totals.by_key[entry.key] = entry
            if msg.offset() >= high - 1:
                return totals.fleet(window_start)
    finally:
        consumer.close()

