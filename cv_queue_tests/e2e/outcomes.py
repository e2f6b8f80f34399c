"""Watching where every job ends: a background reader of the results, DLQ and parking-lot topics."""

import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from cv_queue import headers as h
from cv_queue.kafka.client.clients import poll_batch
from cv_queue.messages import EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings


@dataclass(frozen=True)
class Outcome:
    """One record about a job, as read: a result, a dead letter or a parked letter.

    Results carry what the worker wrote into them; letters carry their headers. `dlq_partition` is set for
    dead letters only (the DLQ is partitioned by category); `reason` for parked letters only.
    """

    kind: str  # "result", "dlq" or "parked"
    attempts: int
    handler_calls: int
    replays: int
    category: str | None = None
    dlq_partition: int | None = None
    reason: str | None = None


def _outcome(kind: str, msg: Message) -> Outcome:
    if kind == "result":
        result = EvaluationResult.model_validate_json(msg.value())
        assert msg.key() == result.job_id.encode(), f"result keyed {msg.key()!r} is for {result.job_id}"
        return Outcome("result", result.attempts, result.handler_calls, result.replays)
    hdrs = msg.headers()
    return Outcome(
        kind,
        attempts=h.read_int(hdrs, h.ATTEMPTS, -1),
        handler_calls=h.read_int(hdrs, h.HANDLER_CALLS, -1),
        replays=h.read_int(hdrs, h.REPLAYS, 0),
        category=h.read_str(hdrs, h.ERROR_CATEGORY),
        dlq_partition=msg.partition() if kind == "dlq" else None,
        reason=h.read_str(hdrs, h.PARKED_REASON) if kind == "parked" else None,
    )


class OutcomeWatcher(threading.Thread):
    """Reads results, dead letters and parked letters (read_committed) and files them by job key, in the
    order read (one key's records of one topic share a partition, so that is the order committed).

    A record it cannot decode stops it; `snapshot` then raises, so a broken watcher cannot pass a run by
    no longer seeing anything.
    """

    def __init__(self, conn: KafkaConnection, settings: QueueSettings) -> None:
        super().__init__(daemon=True, name="e2e-outcomes")
        names = settings.topic_names
        self.kinds = {names.results: "result", names.dlq: "dlq", names.parked: "parked"}
        self.outcomes: dict[bytes, list[Outcome]] = defaultdict(list)
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._consumer = Consumer({**conn.client_config(), "group.id": f"{settings.namespace}-e2e-watch",
                                   "enable.auto.commit": False, "isolation.level": "read_committed",
                                   "fetch.wait.max.ms": 10})
        meta = self._consumer.list_topics(timeout=10).topics
        self._partitions = [TopicPartition(t, p) for t in self.kinds for p in meta[t].partitions]
        self._consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in self._partitions])
        self._catch_up_wanted = False
        self._caught_up = False

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                batch = poll_batch(self._consumer, 1000, 0.2)
                with self.cond:
                    for msg in batch:
                        if msg.error() is not None:
                            continue
                        self.outcomes[msg.key() or b""].append(_outcome(self.kinds[msg.topic()], msg))
                    if self._catch_up_wanted and self._read_to_end():
                        self._catch_up_wanted, self._caught_up = False, True
                    self.cond.notify_all()
        except BaseException as exc:
            with self.cond:
                self.error = exc
                self.cond.notify_all()
        finally:
            self._consumer.close()

    def _read_to_end(self) -> bool:
        """Whether this reader is past every record (and transaction marker) the topics hold now."""
        for tp in self._consumer.position(self._partitions):
            low, high = self._consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            if high > low and tp.offset < high:
                return False
        return True

    def _check_alive(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the outcome watcher failed: {self.error!r}") from self.error
        if not self.is_alive() and not self._halt.is_set():
            raise RuntimeError("the outcome watcher stopped")

    def wait_settled(self, key: bytes, timeout_s: float) -> bool:
        """Until the job has any outcome (its first settlement)."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not self.outcomes.get(key):
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 1.0))
        return True

    def catch_up(self, timeout_s: float) -> bool:
        """Until everything the topics hold at some moment after this call has been read."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            self._catch_up_wanted, self._caught_up = True, False
            while not self._caught_up:
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 1.0))
        return True

    def snapshot(self) -> dict[bytes, list[Outcome]]:
        with self.cond:
            self._check_alive()
            return {k: list(v) for k, v in self.outcomes.items()}

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
