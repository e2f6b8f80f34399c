"""Helpers shared by the tests: free ports, waiting with a real failure, reading topics, running workers."""

import contextlib
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from cv_queue.kafka.clients import poll_batch
from cv_queue.kafka.worker import PartitionWorker, WorkerStats
from cv_queue.settings import KafkaConnection, QueueSettings, Slot


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(width: int = 3, controller_offset: int = 100) -> int:
    """A base port such that base..base+width-1 and the controller ports above them are all free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 40000)
        ports = [base + i for i in range(width)] + [base + controller_offset + i for i in range(width)]
        if all(port_is_free(p) for p in ports):
            return base
    raise RuntimeError("no free port block found")


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll until predicate() is true; fail the test (never pass silently) when time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def read_topic(conn: KafkaConnection, topic: str, *, expect: int | None = None, timeout_s: float = 30.0,
               idle_s: float = 2.0) -> list[Message]:
    """Every committed record of a topic, read from the beginning (read_committed, no group commits).

    With `expect`, reads until that many arrived (or timeout); without, until idle for idle_s.
    Returns what it read: callers assert on it.
    """
    consumer = Consumer({**conn.client_config(), "group.id": unique("reader-"), "enable.auto.commit": False,
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = poll_batch(consumer, 1000, 0.2)
            for msg in batch:
                if msg.error() is None:
                    out.append(msg)
            if batch:
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                # keep reading briefly: a duplicate would arrive right behind
                if time.monotonic() - last > 0.5:
                    break
            elif expect is None and time.monotonic() - last > idle_s:
                break
        return out
    finally:
        consumer.close()


@dataclass
class RunningWorker:
    worker: PartitionWorker
    thread: threading.Thread
    stop: threading.Event
    result: list[WorkerStats]
    errors: list[BaseException]

    def join(self, timeout_s: float = 60.0) -> WorkerStats:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.errors:
            raise self.errors[0]
        return self.result[0]


def start_worker(conn: KafkaConnection, settings: QueueSettings, slot: Slot, **kwargs: object) -> RunningWorker:
    worker = PartitionWorker(conn, settings, slot, **kwargs)  # type: ignore[arg-type]
    stop = threading.Event()
    result: list[WorkerStats] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(worker.run(stop))
        except BaseException as exc:  # surfaced by join()
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True, name=f"test-worker-{slot.name}")
    thread.start()
    return RunningWorker(worker, thread, stop, result, errors)


@contextlib.contextmanager
def running_workers(conn: KafkaConnection, settings: QueueSettings, **kwargs: object) -> Iterator[list[RunningWorker]]:
    workers = [start_worker(conn, settings, slot, **kwargs) for slot in settings.slots()]
    try:
        yield workers
    finally:
        for w in workers:
            w.stop.set()
        for w in workers:
            w.thread.join(60)


def tuned(settings: QueueSettings, **sections: dict) -> QueueSettings:
    """A copy of settings with some fields of some sections changed: tuned(s, retry={"max_attempts": 2})."""
    updates = {name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()}
    return settings.model_copy(update=updates)
