"""Where every job ended: results, dead letters and parked letters, read read_committed and filed by job id.

The chaos tests' one source of truth. A job is *settled* once it has any outcome in these three topics; it is
*lost* when it has none, *duplicated* when it has more than one (in one topic or across them).
"""

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from cv_queue.kafka.client.clients import poll_batch
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue.messages import DeadLetter, EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.support import unique


@dataclass(frozen=True)
class Seen:
    """One outcome record, with the time the ledger read it (time.monotonic())."""

    kind: str  # "result", "dlq" or "parked"
    message: Message
    read_at: float

    @property
    def result(self) -> EvaluationResult:
        return EvaluationResult.model_validate_json(self.message.value())

    @property
    def letter(self) -> DeadLetter:
        m = self.message
        return read_dead_letter(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers())

    @property
    def headers(self) -> dict[str, bytes | None]:
        return dict(self.message.headers() or [])


@dataclass(frozen=True)
class Figures:
    expected: int
    settled: int
    lost: list[str]
    duplicated: dict[str, int]
    unexpected: list[str]  # outcomes for ids nobody enqueued

    def line(self) -> str:
        return (f"jobs={self.expected} settled={self.settled} lost={len(self.lost)} "
                f"duplicates={sum(n - 1 for n in self.duplicated.values())} unexpected={len(self.unexpected)}")


@dataclass
class OutcomeLedger:
    """Reads the three outcome topics from the beginning; call `read` (or `wait_until`) to catch up."""

    conn: KafkaConnection
    settings: QueueSettings
    outcomes: dict[str, list[Seen]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = self.settings.topic_names
        self._kinds = {names.results: "result", names.dlq: "dlq", names.parked: "parked"}
        self._consumer = Consumer({**self.conn.client_config(), "group.id": unique("chaos-ledger-"),
                                   "enable.auto.commit": False, "isolation.level": "read_committed",
                                   "fetch.wait.max.ms": 50, "enable.partition.eof": False})
        topics = self._consumer.list_topics(timeout=30).topics
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                               for t in self._kinds for p in topics[t].partitions])

    def read(self, seconds: float = 0.3) -> int:
        """Take in whatever arrives within `seconds`; returns how many records."""
        deadline = time.monotonic() + seconds
        taken = 0
        while True:
            batch = poll_batch(self._consumer, 2000, max(0.0, min(0.2, deadline - time.monotonic())))
            now = time.monotonic()
            for msg in batch:
                if msg.error() is not None:
                    continue
                key = (msg.key() or b"").decode("utf-8", errors="replace")
                self.outcomes.setdefault(key, []).append(Seen(self._kinds[msg.topic()], msg, now))
                taken += 1
            if now >= deadline:
                return taken

    def wait_until(self, predicate: Callable[["OutcomeLedger"], bool], timeout_s: float, what: str,
                   on_tick: Callable[[], None] | None = None) -> float:
        """Read until predicate(self) holds; fail the test when time runs out. Returns the seconds it took."""
        start = time.monotonic()
        while not predicate(self):
            if time.monotonic() - start > timeout_s:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; "
                                     f"{len(self.outcomes)} job ids settled so far")
            self.read(0.3)
            if on_tick is not None:
                on_tick()
        return time.monotonic() - start

    def settle_quietly(self, idle_s: float = 2.0) -> None:
        """Keep reading until nothing new arrives for idle_s: a duplicate would come right behind the last record."""
        while self.read(idle_s):
            pass

    def of(self, job_id: str, kind: str | None = None) -> list[Seen]:
        return [s for s in self.outcomes.get(job_id, []) if kind is None or s.kind == kind]

    def has_result(self, job_ids: Iterable[str]) -> bool:
        return all(self.of(j, "result") for j in job_ids)

    def count(self, kind: str) -> int:
        return sum(1 for seen in self.outcomes.values() for s in seen if s.kind == kind)

    def figures(self, expected_ids: Iterable[str]) -> Figures:
        expected = set(expected_ids)
        per_id = Counter({job_id: len(seen) for job_id, seen in self.outcomes.items()})
        return Figures(
            expected=len(expected),
            settled=sum(1 for j in expected if per_id[j]),
            lost=sorted(j for j in expected if not per_id[j]),
            duplicated={j: n for j, n in per_id.items() if n > 1},
            unexpected=sorted(j for j in per_id if j not in expected),
        )

    def close(self) -> None:
        self._consumer.close()
