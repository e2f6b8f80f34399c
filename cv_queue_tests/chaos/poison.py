"""The poison records of the poison-mix test: how each is made and sent, and the fate each must meet."""

import operator
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from cv_queue.messages import EvaluationJob
from cv_queue.settings import KafkaConnection
from cv_queue_tests.support import unique

OVERSIZE_BYTES = 999_800
HEADER_POISON_BYTES = 4096  # the padding compresses well, so kcat's batch stays compressed
# Not `msg.headers()`: once CPython 3.11 specializes that call site it skips the check that turns the client's
# "result with an exception set" into a SystemError, and the undecodable headers come back as a list holding NULL.
read_headers = operator.methodcaller("headers")
# A header *name* that is not UTF-8. The Python client cannot produce one (header names are str), kcat can.
UNDECODABLE_HEADER = b"\xff\xfebad=x"


def padded_to(job: EvaluationJob, size: int) -> bytes:
    """The job's JSON with cv_text grown so that the whole value is exactly `size` bytes."""
    base = len(job.model_copy(update={"cv_text": ""}).to_bytes())
    value = job.model_copy(update={"cv_text": "x" * (size - base)}).to_bytes()
    assert len(value) == size
    return value


def send_oversize(conn: KafkaConnection, topic: str, partition: int, key: bytes, value: bytes) -> None:
    """A record far over the worker's max_job_bytes, but within the topic's max.message.bytes."""
    producer = Producer({**conn.client_config(), "message.max.bytes": 2_000_000, "acks": "all"})
    errors: list[object] = []
    producer.produce(topic, key=key, value=value, partition=partition,
                     on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert producer.flush(30) == 0 and not errors, f"the oversize record was not delivered: {errors}"


def send_with_undecodable_header(bootstrap: str, topic: str, partition: int, key: bytes, value: bytes,
                                 compression: str) -> None:
    """kcat sends a file as one record; its -H takes raw bytes, so the header name can be any bytes.

    The batch must already be in the topic's compression codec (and `value` compressible enough that librdkafka
    keeps it compressed): a broker that recompresses a batch re-encodes its header names as UTF-8 strings, and the
    invalid bytes arrive in the log as U+FFFD, a perfectly readable name.
    """
    assert shutil.which("kcat"), "the chaos suite needs kcat on PATH (apt-get install kcat)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "value.json"
        path.write_bytes(value)
        done = subprocess.run([b"kcat", b"-P", b"-b", bootstrap.encode(), b"-t", topic.encode(),
                               b"-p", str(partition).encode(), b"-z", compression.encode(), b"-k", key,
                               b"-H", UNDECODABLE_HEADER, str(path).encode()], capture_output=True, timeout=60)
    assert done.returncode == 0, f"kcat failed: {done.stderr.decode(errors='replace')}"


def headers_are_undecodable(conn: KafkaConnection, topic: str, partition: int, key: bytes) -> bool:
    """Whether the record with `key` in that partition reached the log with headers the Python client cannot read."""
    consumer = Consumer({**conn.client_config(), "group.id": unique("chaos-probe-"), "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None or msg.key() != key:
                continue
            try:
                read_headers(msg)  # once only: after its first failure the client hands out a broken list
            except Exception:
                return True
            return False
        raise AssertionError(f"record {key!r} not found in {topic}[{partition}]")
    finally:
        consumer.close()


@dataclass(frozen=True)
class Fault:
    """One poison record: its directive (or special sending), and the fate it must meet."""

    name: str
    directive: str  # job.labels["simulate"], "" for records the handler never sees
    fate: str  # "result" or "dlq"
    category: str = ""  # of the dead letter
    error_class: str = ""
    handler_calls: int = 0
    attempts: int = 0


FAULTS = [
    Fault("hung handler", "sleep:3600000", "dlq", "transient", "cv_queue.JobTimeout", handler_calls=2, attempts=2),
    Fault("KeyboardInterrupt", "base_exception:KeyboardInterrupt", "result", handler_calls=2, attempts=2),
    Fault("SystemExit", "base_exception:SystemExit", "result", handler_calls=2, attempts=2),
    Fault("CancelledError", "base_exception:CancelledError", "result", handler_calls=2, attempts=2),
    Fault("999,800-byte record", "", "dlq", "invalid_payload", "cv_queue.errors.InvalidPayloadError", attempts=0),
    # Past retry.rate_limit_budget_s (an hour): dead-lettered at once; a throttle is not an attempt.
    Fault("one-day Retry-After", "rate_limited:1:86400", "dlq", "rate_limited",
          "cv_queue.errors.RateLimitedError", handler_calls=1, attempts=0),
    Fault("non-UTF-8 header name", "", "dlq", "invalid_payload", "cv_queue.errors.InvalidPayloadError",
          attempts=0),
    Fault("ValidationError once", "invalid_output:1", "result", handler_calls=2, attempts=1),
    Fault("JSONDecodeError once", "malformed:1", "result", handler_calls=2, attempts=1),
    Fault("ValidationError always", "invalid_output:99", "dlq", "permanent",
          "pydantic_core._pydantic_core.ValidationError", handler_calls=3, attempts=1),
]

