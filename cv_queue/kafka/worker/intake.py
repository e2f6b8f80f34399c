"""Records in, tasks out: each consumed record is decoded once, and every one ends up either a task or settled.

- A record the restored offset map shows as done (an earlier worker finished it: resume.py) is counted and dropped.

- A record whose headers, bookkeeping or value cannot be decoded is settled at once with an invalid_payload dead
  letter: the bytes will not get better, so it is never retried.
- A retry-topic record that is not yet due waits in memory (counted per retry partition, apart from main-topic
  work, for flow control); its due time is clamped to the longest delay the retry policy could have given (for a
  job a rate limiter refused, the rate-limit budget), so a hand-made or foreign record cannot hold its partition
  for longer. A record whose lane (its key) has an older
  record still waiting waits until that one is due too, so a key's records run in offset order.
- Anything else becomes a Task, ready for the handler pool; one from the interactive lane's topic (or a retry
  record of such a job: `cvq.lane`) is marked interactive, and the pool starts it before bulk ones.
"""

import logging
from collections.abc import Callable
from dataclasses import replace

from confluent_kafka import Message

from cv_queue.errors import ErrorCategory, InvalidPayloadError
from cv_queue.kafka.client.clients import message_headers
from cv_queue.kafka.wire.delivery import parse_delivery
from cv_queue.kafka.wire.envelope import now_ms
from cv_queue.kafka.wire.records import Failure, OutputRecord, SourceRecord
from cv_queue.kafka.worker.execution import Task
from cv_queue.kafka.worker.inflight import DueQueue
from cv_queue.kafka.worker.routing import Router
from cv_queue.messages import decode_job
from cv_queue.settings import QueueSettings

log = logging.getLogger("cv_queue.worker")


def source_record(msg: Message) -> tuple[SourceRecord, Exception | None]:
    """The record, and the error if its headers could not be decoded (a non-UTF-8 header name, for instance: the
    client cannot hand such headers over at all, so they are lost to us)."""
    _, ts = msg.timestamp()
    headers, header_error = message_headers(msg)
    return SourceRecord(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), timestamp_ms=ts,
                        key=msg.key(), value=msg.value(), headers=headers), header_error


class Intake:
    def __init__(self, settings: QueueSettings, router: Router,
                 track: Callable[[SourceRecord], bool], settle: Callable[[SourceRecord, OutputRecord], None]) -> None:
        self.settings = settings
        self.retry_topic = settings.topic_names.retry
        self.interactive_topic = settings.topic_names.interactive
        self.router = router
        self._track = track
        self._settle = settle
        retry = settings.retry
        self._max_wait_ms = int(retry.max_delay_ms * (1 + retry.jitter)) + 1000
        self._max_throttle_wait_ms = max(self._max_wait_ms, int(retry.rate_limit_budget_s * 1000 * (1 + retry.jitter)))
        self.ready: list[Task] = []
        self.due: DueQueue[Task] = DueQueue()
        self.waiting_by_partition: dict[int, int] = {}
        # Lanes (keys, or partitions under partition ordering) with records waiting in `due`: the latest due time
        # given to one of them, and how many wait.
        self._waiting_lanes: dict[tuple[str, int, object], tuple[int, int]] = {}

    def take(self, msg: Message) -> None:
        source, header_error = source_record(msg)
        if not self._track(source):
            return  # an earlier worker finished it and committed its output: never run a job twice
        try:
            if header_error is not None:
                raise InvalidPayloadError("undecodable_headers", f"the record's headers cannot be read "
                                          f"({header_error}); they are not kept in the dead letter")
            self._accept(source)
        except InvalidPayloadError as exc:
            self._dead_letter_now(source, Failure.from_exception(exc, ErrorCategory.INVALID_PAYLOAD))
        except Exception as exc:
            # A bug of ours on one odd record must not stop the slot: dead-letter the record, whole, with the
            # exception that tripped us, and go on.
            log.exception("unexpected error on %s[%d]@%d; dead-lettering it", source.topic, source.partition,
                          source.offset)
            self._dead_letter_now(source, Failure.from_exception(exc, ErrorCategory.INVALID_PAYLOAD))

    def _accept(self, source: SourceRecord) -> None:
        delivery = parse_delivery(source, source.topic == self.retry_topic)
        if source.topic == self.interactive_topic:
            delivery = replace(delivery, interactive=True)
        job = decode_job(source.value, source.key, self.settings.worker.max_job_bytes)
        lane = (source.topic, source.partition) if self.settings.worker.ordering == "partition" else job.key
        task = Task(delivery=delivery, job=job, lane=lane)
        longest = self._max_throttle_wait_ms if delivery.throttles else self._max_wait_ms
        due = min(delivery.due_at_ms, source.timestamp_ms + longest) if delivery.due_at_ms else 0
        lane_key = (source.topic, source.partition, lane)
        waiting = self._waiting_lanes.get(lane_key)
        if waiting is not None:
            # An older record of this lane still waits for its time: this one runs after it, never before (its
            # output is produced as soon as it is done, so running it first would publish the key out of order).
            due = max(due, waiting[0])
        if due > now_ms() or waiting is not None:
            self.due.push(due, task)
            self._waiting_lanes[lane_key] = (due, (waiting[1] if waiting else 0) + 1)
            self.waiting_by_partition[source.partition] = self.waiting_by_partition.get(source.partition, 0) + 1
        else:
            self.ready.append(task)

    def _dead_letter_now(self, source: SourceRecord, failure: Failure) -> None:
        delivery = parse_delivery(source, source.topic == self.retry_topic, strict=False)
        self._settle(source, self.router.dead_letter(delivery, failure, attempts=0, calls=0))

    def release_due(self) -> None:
        """Move retry records whose time has come to the ready list."""
        if not len(self.due):
            return
        for task in self.due.pop_due(now_ms()):
            source = task.delivery.source
            self.waiting_by_partition[source.partition] -= 1
            lane_key = (source.topic, source.partition, task.lane)
            latest_due, count = self._waiting_lanes[lane_key]
            if count == 1:
                del self._waiting_lanes[lane_key]
            else:
                self._waiting_lanes[lane_key] = (latest_due, count - 1)
            self.ready.append(task)

    def take_ready(self) -> list[Task]:
        ready, self.ready = self.ready, []
        return ready
