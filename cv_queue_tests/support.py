"""Helpers shared by the tests: free ports, waiting with a real failure, reading topics, running workers."""

import contextlib
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from cv_queue.kafka.admin.lag import end_offsets
from cv_queue.kafka.client.clients import admin_client, poll_batch
from cv_queue.kafka.worker.partition_worker import PartitionWorker, WorkerStats
from cv_queue.messages import EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings, Slot


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: Below Linux's ephemeral range (32768-60999 by default): a port found free there can be taken by any outgoing
#: connection in the seconds before a broker's JVM binds it (it happened: "Address already in use" at start-up).
PORT_RANGE = (20000, 32000)


def free_port_block(width: int = 3, controller_offset: int = 100) -> int:
    """A base port such that base..base+width-1 and the controller ports above them are all free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - controller_offset - width)
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
        try:
            if predicate():
                return
        except KafkaException as exc:
            # Committed offsets read while a transaction's offset commit is still open (a killed worker's, until
            # its successor's init_transactions ends it): not yet, like any other state still settling.
            if exc.args[0].code() != KafkaError.UNSTABLE_OFFSET_COMMIT:
                raise
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def read_topic(conn: KafkaConnection, topic: str, *, expect: int | None = None, timeout_s: float = 30.0,
               idle_s: float = 2.0) -> list[Message]:
    """Every committed record of a topic, read from the beginning (read_committed, no group commits).

    With `expect`, reads until that many arrived (or timeout); without, until every partition is read to the
    last stable offset it had when the read began (the fetch position moves past transaction markers too) and
    nothing more arrived for idle_s, so a record committed meanwhile is also seen.
    Returns what it read: callers assert on it.
    """
    consumer = Consumer({**conn.client_config(), "group.id": unique("reader-"), "enable.auto.commit": False,
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = list(meta.partitions)
        ends = end_offsets(admin_client(conn), topic, partitions) if expect is None else {}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        caught_up = False
        while time.monotonic() < deadline:
            batch = poll_batch(consumer, 1000, 0.2)
            for msg in batch:
                if msg.error() is None:
                    out.append(msg)
            if batch:
                last = time.monotonic()
            if expect is not None:
                # keep reading briefly once there: a duplicate would arrive right behind
                if len(out) >= expect and time.monotonic() - last > 0.5:
                    break
                continue
            if not caught_up:
                positions = consumer.position([TopicPartition(topic, p) for p in partitions])
                caught_up = all(tp.offset >= ends[tp.partition] for tp in positions if ends[tp.partition] > 0)
            if caught_up and time.monotonic() - last > idle_s:
                break
        return out
    finally:
        consumer.close()


HANDLER_THREAD_PREFIX = "cvq-handler-"
THREAD_EXIT_S = 10.0  # a stopped worker's handler threads wake, see it is closing and return within this


def _is_handler_thread_of(thread: threading.Thread, slot: Slot) -> bool:
    """A handler thread of `slot`'s worker, by name (`cvq-handler-<slot>...`), not of slot "0-10" for "0-1"."""
    prefix = f"{HANDLER_THREAD_PREFIX}{slot.name}"
    return thread.name.startswith(prefix) and not thread.name[len(prefix):len(prefix) + 1].isdigit()


def live_handler_threads(slot: Slot, ignore: frozenset[threading.Thread] = frozenset()) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.is_alive() and t not in ignore and _is_handler_thread_of(t, slot)]


@dataclass
class RunningWorker:
    """A PartitionWorker running on a thread of the test process. `join` is the only way to end it: it
    stops the worker and fails unless the worker ended, raised nothing, stopped for the expected reason
    and left no handler thread behind."""

    worker: PartitionWorker
    thread: threading.Thread
    stop: threading.Event
    result: list[WorkerStats]
    errors: list[BaseException]
    # Handler threads of this slot alive before this worker started: an earlier worker's leak is that
    # worker's failure, reported by its own join, not this one's.
    earlier_threads: frozenset[threading.Thread] = frozenset()

    def join(self, timeout_s: float = 60.0, stop_reason: str = "stopped") -> WorkerStats:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"worker {self.worker.slot.name} did not stop within {timeout_s:.0f}s"
        if self.errors:
            raise self.errors[0]
        assert self.result, f"worker {self.worker.slot.name} ended without returning its stats"
        stats = self.result[0]
        assert stats.stop_reason == stop_reason, f"worker {stats.slot} stopped {stats.stop_reason!r}"
        deadline = time.monotonic() + THREAD_EXIT_S
        while (left := live_handler_threads(self.worker.slot, self.earlier_threads)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"handler threads still alive {THREAD_EXIT_S:.0f}s after the worker stopped: " \
                         f"{sorted(t.name for t in left)}"
        return stats


def start_worker(conn: KafkaConnection, settings: QueueSettings, slot: Slot, **kwargs: object) -> RunningWorker:
    earlier = frozenset(live_handler_threads(slot))
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
    return RunningWorker(worker, thread, stop, result, errors, earlier)


@contextlib.contextmanager
def running_workers(conn: KafkaConnection, settings: QueueSettings, **kwargs: object) -> Iterator[list[RunningWorker]]:
    """One worker per slot; on leaving, every one is stopped and joined (see RunningWorker.join).

    If the body failed, its error is what the test reports, with any worker failure added as a note.
    """
    workers: list[RunningWorker] = []
    try:
        for slot in settings.slots():
            workers.append(start_worker(conn, settings, slot, **kwargs))
        yield workers
    except BaseException as body_error:
        for w in workers:
            w.stop.set()
        for w in workers:
            try:
                w.join()
            except BaseException as exc:  # reported alongside the body's own failure
                body_error.add_note(f"worker {w.worker.slot.name} also failed: {exc!r}")
        raise
    for w in workers:
        w.stop.set()  # all at once: each then drains in parallel
    for w in workers:
        w.join()


def tuned(settings: QueueSettings, **sections: dict) -> QueueSettings:
    """A copy of settings with some fields of some sections changed: tuned(s, retry={"max_attempts": 2})."""
    updates = {name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()}
    return settings.model_copy(update=updates)


def results_by_job(conn: KafkaConnection, settings: QueueSettings, **read: float) -> Counter[str]:
    """How many committed results each job has (read_committed; `read` goes to read_topic)."""
    return Counter(EvaluationResult.model_validate_json(m.value()).job_id
                   for m in read_topic(conn, settings.topic_names.results, **read))
