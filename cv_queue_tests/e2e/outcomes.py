"""Watching where every job ends: a background reader of the results, DLQ and parking-lot topics."""

import threading
import time
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cv_queue import headers as h
from cv_queue.kafka.clients import poll_batch
from cv_queue.messages import EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings


class OutcomeWatcher(threading.Thread):
    """Reads results, dead letters and parked letters (read_committed) and files them by job key."""

    def __init__(self, conn: KafkaConnection, settings: QueueSettings) -> None:
        super().__init__(daemon=True, name="e2e-outcomes")
        names = settings.topic_names
        self.kinds = {names.results: "result", names.dlq: "dlq", names.parked: "parked"}
        self.outcomes: dict[bytes, list[tuple[str, dict]]] = defaultdict(list)
        self.cond = threading.Condition()
        self._halt = threading.Event()
        self._consumer = Consumer({**conn.client_config(), "group.id": f"{settings.namespace}-e2e-watch",
                                   "enable.auto.commit": False, "isolation.level": "read_committed",
                                   "fetch.wait.max.ms": 10})
        meta = self._consumer.list_topics(timeout=10).topics
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in self.kinds for p in meta[t].partitions])

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                batch = poll_batch(self._consumer, 1000, 0.2)
                if not batch:
                    continue
                with self.cond:
                    for msg in batch:
                        if msg.error() is not None:
                            continue
                        kind = self.kinds[msg.topic()]
                        detail: dict = {"category": h.read_str(msg.headers(), h.ERROR_CATEGORY)}
                        if kind == "result":
                            result = EvaluationResult.model_validate_json(msg.value())
                            detail = {"replays": result.replays, "attempts": result.attempts}
                        self.outcomes[msg.key() or b""].append((kind, detail))
                    self.cond.notify_all()
        finally:
            self._consumer.close()

    def wait_settled(self, key: bytes, timeout_s: float) -> bool:
        """Until the job has any outcome (its first settlement)."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not self.outcomes.get(key):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
        return True

    def snapshot(self) -> dict[bytes, list[tuple[str, dict]]]:
        with self.cond:
            return {k: list(v) for k, v in self.outcomes.items()}

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
