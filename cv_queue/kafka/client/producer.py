"""Enqueueing jobs with confirmed delivery.

`enqueue` returns only after the broker acknowledged every record (acks=all, idempotent), and says
where each landed. A failed delivery raises EnqueueError with the failure category, so a caller can
tell "try again" (transient) from "this can never be sent" (permanent).
"""

from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import KafkaError, Message, Producer
from pydantic import BaseModel

from cv_queue.errors import ErrorCategory
from cv_queue.headers import Headers
from cv_queue.kafka.client.clients import job_producer
from cv_queue.lanes import Lane
from cv_queue.messages import EvaluationJob
from cv_queue.settings import KafkaConnection, QueueSettings


class Delivery(BaseModel, frozen=True):
    job_id: str
    topic: str
    partition: int
    offset: int


class EnqueueError(RuntimeError):
    """Some records were not delivered. `failures` maps job_id -> broker error; `delivered` lists the rest."""

    def __init__(self, failures: dict[str, KafkaError], delivered: list[Delivery]) -> None:
        self.failures = failures
        self.delivered = delivered
        first = next(iter(failures.values()))
        self.category = classify_delivery_error(first)
        super().__init__(
            f"{len(failures)} of {len(failures) + len(delivered)} job(s) were not delivered "
            f"({self.category}): {first.str()}"
        )


# Retrying these cannot succeed: the record or the topic is wrong, not the moment.
_PERMANENT_DELIVERY_CODES = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC, KafkaError.INVALID_RECORD, KafkaError._INVALID_ARG,
})


def classify_delivery_error(err: KafkaError) -> ErrorCategory:
    return ErrorCategory.PERMANENT if err.code() in _PERMANENT_DELIVERY_CODES else ErrorCategory.TRANSIENT


class RawRecord(BaseModel, frozen=True):
    """A record as bytes, for sending things that are not valid jobs (tests, benchmarks, tools)."""

    key: bytes | None
    value: bytes | None
    headers: Headers = []
    label: str = ""


class JobProducer:
    """Sends jobs to a job topic (the main topic: `JobProducer.for_lane` picks a lane's), keyed by job_id, and waits
    for every acknowledgement."""

    def __init__(self, conn: KafkaConnection, topic: str, producer: Producer | None = None) -> None:
        self.topic = topic
        self._producer = producer or job_producer(conn)

    @classmethod
    def for_lane(cls, conn: KafkaConnection, settings: QueueSettings, lane: Lane = Lane.BULK,
                 producer: Producer | None = None) -> "JobProducer":
        """A producer for the jobs of `lane`: bulk to the main topic, interactive to the interactive lane's."""
        return cls(conn, settings.topic_names.for_lane(lane), producer)

    def enqueue(self, job: EvaluationJob, headers: Headers | None = None, timeout_s: float = 30.0) -> Delivery:
        return self.enqueue_batch([job], headers=headers, timeout_s=timeout_s)[0]

    def enqueue_batch(
        self,
        jobs: Iterable[EvaluationJob],
        headers: Headers | None = None,
        timeout_s: float = 60.0,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Delivery]:
        records = (RawRecord(key=j.key, value=j.to_bytes(), headers=headers or [], label=j.job_id) for j in jobs)
        return self.send_raw(records, timeout_s=timeout_s, on_progress=on_progress)

    def send_raw(
        self,
        records: Iterable[RawRecord],
        timeout_s: float = 60.0,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Delivery]:
        """Produce every record, then flush; raise EnqueueError if any was not acknowledged."""
        delivered: dict[int, Delivery] = {}
        failures: dict[str, KafkaError] = {}
        sent = 0

        def make_callback(index: int, label: str) -> Callable[[KafkaError | None, Message], None]:
            def on_delivery(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    failures[label] = err
                else:
                    delivered[index] = Delivery(job_id=label, topic=msg.topic(), partition=msg.partition(),
                                                offset=msg.offset())
            return on_delivery

        for index, record in enumerate(records):
            label = record.label or str(index)
            while True:
                try:
                    self._producer.produce(self.topic, key=record.key, value=record.value,
                                           headers=record.headers or None,
                                           on_delivery=make_callback(index, label))
                    break
                except BufferError:
                    self._producer.poll(0.05)  # local queue full: let deliveries drain, then retry
                except Exception as exc:
                    failures[label] = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else \
                        KafkaError(KafkaError._INVALID_ARG, str(exc))
                    break
            sent += 1
            if sent % 1000 == 0:
                self._producer.poll(0)
                if on_progress is not None:
                    on_progress(sent)
        remaining = self._producer.flush(timeout_s)
        if remaining:
            failures.setdefault("<flush>", KafkaError(KafkaError._MSG_TIMED_OUT,
                                                      f"{remaining} record(s) unacknowledged after {timeout_s}s"))
        ordered = [delivered[i] for i in sorted(delivered)]
        if failures:
            raise EnqueueError(failures, ordered)
        if on_progress is not None:
            on_progress(sent)
        return ordered

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)


def deliveries_by_partition(deliveries: Sequence[Delivery]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for d in deliveries:
        counts[d.partition] = counts.get(d.partition, 0) + 1
    return counts
