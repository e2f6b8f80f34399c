"""The partition-pair worker: one slot's partitions, processed concurrently, committed exactly once.

How one worker runs:
- It *assigns* its slot's partitions of the main and retry topics (no group rebalancing) and starts from
  the committed offsets of the worker group. Its transactional id is derived from the slot, so starting
  a second worker for the slot fences the first.
- The poll loop never runs a handler. It decodes records, hands them to a KeyedScheduler (bounded
  concurrency, one job per key at a time) and a pool of handler threads, and collects completions.
- Every output (result, retry record, dead letter) is held until its source offset is under the
  contiguous completed watermark, then produced in the same transaction that commits that watermark.
  A crash at any point therefore either commits an output together with its offset, or neither.
- Retry-topic records wait in memory until due; a retry partition with too many waiting is paused.
"""

import contextlib
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory, InvalidPayloadError
from cv_queue.evaluation.handler import JobContext, JobHandler, load_handler
from cv_queue.kafka.backoff import InProcessRetry, retry_delay_ms
from cv_queue.kafka.classify import ErrorClassifier
from cv_queue.kafka.clients import assigned_consumer, poll_batch, transactional_producer
from cv_queue.kafka.envelope import (
    Failure,
    OutputRecord,
    SourceRecord,
    dead_letter_record,
    now_ms,
    retry_record,
)
from cv_queue.kafka.inflight import DueQueue, KeyedScheduler, PartitionTracker
from cv_queue.kafka.transaction import (
    TransactionAbandonedError,
    TransactionFatalError,
    TransactionFencedError,
    commit_atomically,
)
from cv_queue.messages import EvaluationJob, EvaluationResult, decode_job
from cv_queue.settings import KafkaConnection, QueueSettings, Slot

log = logging.getLogger("cv_queue.worker")

START_TIMEOUT_S = 60.0
BUSY_POLL_S = 0.005  # poll timeout while jobs run, so completions are settled within ~5 ms
OFFER_CHUNK = 8  # decoded jobs handed to the handler threads at a time
IDLE_REPORT_EVERY = 6  # an idle worker reports every 6th progress interval instead of every one


class WorkerStartError(RuntimeError):
    """The worker cannot start: topics missing, partitions absent, broker unreachable."""


@dataclass
class WorkerStats:
    """Counters a worker reports as progress and returns when it stops."""

    slot: str
    worker: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    consumed: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    invalid: int = 0
    handler_calls: int = 0
    commits: int = 0
    in_flight: int = 0
    buffered: int = 0
    waiting_retries: int = 0
    lag: int = 0
    stop_reason: str = ""

    def summary(self) -> str:
        return (
            f"slot {self.slot}: consumed {self.consumed}, succeeded {self.succeeded}, retried {self.retried}, "
            f"dead-lettered {self.dead_lettered} (invalid {self.invalid}), in flight {self.in_flight}, "
            f"buffered {self.buffered}, waiting retries {self.waiting_retries}, lag {self.lag}, "
            f"commits {self.commits}"
        )


@dataclass(slots=True)
class _Task:
    """A decoded job on its way through the scheduler and a handler thread."""

    source: SourceRecord
    job: EvaluationJob
    attempts_before: int
    calls_before: int
    replays: int
    lane: bytes | tuple[str, int]  # what must not run concurrently: the key, or the partition


@dataclass(slots=True)
class _Completion:
    task: _Task
    calls: int
    result: bytes | None
    failure: Failure | None


def _source(msg: Message) -> SourceRecord:
    _, ts = msg.timestamp()
    return SourceRecord(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), timestamp_ms=ts,
                        key=msg.key(), value=msg.value(), headers=msg.headers() or [])


class PartitionWorker:
    """Runs one slot until `stop` is set (or it is fenced). Build, then call `run(stop)`."""

    def __init__(
        self,
        conn: KafkaConnection,
        settings: QueueSettings,
        slot: Slot,
        handler: JobHandler | None = None,
        on_progress: Callable[[WorkerStats], None] | None = None,
        worker_id: str | None = None,
    ) -> None:
        if slot not in settings.slots():
            # Workers assign partitions and are fenced only per slot: an overlapping slot ("1-2" next to
            # "0-1") would process partition 1 twice under two transactional ids.
            raise WorkerStartError(
                f"slot {slot.name} is not one of this queue's slots {[s.name for s in settings.slots()]} "
                f"({settings.topics.partitions} partitions, {settings.topics.partitions_per_worker} per worker)"
            )
        self.conn = conn
        self.settings = settings
        self.slot = slot
        self.names = settings.topic_names
        self.handler = handler or load_handler(settings.worker.handler, settings.worker.handler_options)
        self.on_progress = on_progress
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{slot.name}"
        self.stats = WorkerStats(slot=slot.name, worker=self.worker_id)
        self._classifier = ErrorClassifier(settings.retry.rules)
        self._rng = random.Random()
        self._scheduler: KeyedScheduler[_Task] = KeyedScheduler(settings.worker.max_in_flight)
        self._due: DueQueue[_Task] = DueQueue()
        self._waiting_by_partition: dict[int, int] = {}
        self._trackers: dict[tuple[str, int], PartitionTracker[OutputRecord]] = {}
        # Handler threads take their next job themselves under this condition, so a finished job's slot is
        # refilled at once, not when the poll loop next comes round (and not after a commit it is blocked in).
        self._cond = threading.Condition()
        self._taking = True  # False once shutting down: running jobs finish, no new ones start
        self._closing = False
        self._ready: list[_Task] = []  # decoded this loop turn, handed to the scheduler in one batch
        self._done: queue.SimpleQueue[_Completion] = queue.SimpleQueue()
        self._paused: set[tuple[str, int]] = set()
        self._settled_since_commit = 0
        self._threads: list[threading.Thread] = []
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._in_transaction = False
        self._stopping = threading.Event()
        self._last_summary = ""
        self._quiet_reports = 0

    # ------------------------------------------------------------------ start-up

    def _source_partitions(self) -> list[tuple[str, int]]:
        return [(t, p) for t in (self.names.main, self.names.retry) for p in self.slot.partitions]

    def _check_topics(self, consumer: Consumer) -> None:
        metadata = consumer.list_topics(timeout=START_TIMEOUT_S)
        for topic in (self.names.main, self.names.retry, self.names.dlq, self.names.results):
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                raise WorkerStartError(
                    f"topic {topic!r} does not exist on {self.conn.bootstrap_servers}; "
                    "run `cv-queue topics provision` (or materialize the kafka_topics assets) first"
                )
        for topic in (self.names.main, self.names.retry):
            have = set(metadata.topics[topic].partitions)
            missing = [p for p in self.slot.partitions if p not in have]
            if missing:
                raise WorkerStartError(
                    f"slot {self.slot.name} needs partitions {missing} of {topic!r}, which has {len(have)}"
                )

    def _committed_offsets(self, consumer: Consumer) -> list[TopicPartition]:
        """Fetch committed offsets explicitly (not through a pending assignment, which can stall on a
        brand-new cluster) and retry until the coordinator answers."""
        wanted = [TopicPartition(t, p) for t, p in self._source_partitions()]
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                return consumer.committed(wanted, timeout=10)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"could not read committed offsets: {exc}") from exc
                time.sleep(0.5)

    def _start(self) -> None:
        self._consumer = assigned_consumer(self.conn, self.settings, self.settings.group_id,
                                           role=f"worker-{self.slot.name}")
        self._check_topics(self._consumer)
        self._producer = transactional_producer(self.conn, self.settings.transactional_id(self.slot),
                                                self.settings.worker.transaction_timeout_ms)
        # init_transactions fences any older producer with this id and aborts its open transaction, so
        # the committed offsets read next are final.
        self._producer.init_transactions(START_TIMEOUT_S)
        assignment = []
        for tp in self._committed_offsets(self._consumer):
            start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._trackers[(tp.topic, tp.partition)] = PartitionTracker(tp.offset if tp.offset >= 0 else -1)
            assignment.append(TopicPartition(tp.topic, tp.partition, start))
        self._consumer.assign(assignment)
        for i in range(self.settings.worker.max_in_flight):
            thread = threading.Thread(target=self._handler_loop, name=f"cvq-handler-{self.slot.name}-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("worker %s started on %s partitions %s (group %s, transactional id %s)", self.worker_id,
                 self.names.main, list(self.slot.partitions), self.settings.group_id,
                 self.settings.transactional_id(self.slot))

    # ------------------------------------------------------------------ handler threads

    def _next_task(self) -> _Task | None:
        with self._cond:
            while not self._closing:
                if self._taking and (taken := self._scheduler.take()) is not None:
                    return taken[1]
                self._cond.wait()
        return None

    def _offer(self, tasks: list[_Task]) -> None:
        """Hand jobs to the scheduler and wake as many handler threads as there are new jobs."""
        if not tasks:
            return
        with self._cond:
            for task in tasks:
                self._scheduler.offer(task.lane, task)
            self._cond.notify(len(tasks))

    def _failure(self, exc: BaseException) -> Failure:
        try:
            return Failure.from_exception(exc, self._classifier.classify(exc))
        except Exception:
            return Failure(ErrorCategory.TRANSIENT, type(exc).__qualname__, "unprintable exception", "")

    def _handler_loop(self) -> None:
        retrying = InProcessRetry(self.settings.retry, self._classifier)  # one per thread: not thread-safe
        while (task := self._next_task()) is not None:
            calls = 0
            ctx_base = (task.attempts_before + 1, task.replays, self.worker_id, task.source.partition,
                        task.source.offset)

            def invoke(task: _Task = task, ctx_base: tuple = ctx_base) -> bytes:
                nonlocal calls
                calls += 1
                attempt, replays, worker, partition, offset = ctx_base
                ctx = JobContext(attempt=attempt, handler_call=task.calls_before + calls, replays=replays,
                                 worker=worker, partition=partition, offset=offset)
                scores = self.handler(task.job, ctx)
                return EvaluationResult(
                    job_id=task.job.job_id, request_id=task.job.request_id, scores=scores,
                    evaluated_at=datetime.now(UTC), job_created_at=task.job.created_at, attempts=attempt,
                    handler_calls=task.calls_before + calls, replays=replays, worker=worker,
                ).to_bytes()

            completion: _Completion | None = None
            try:
                result = retrying(invoke)
                completion = _Completion(task, calls, result, None)
            except Exception as exc:  # every handler failure is classified and routed
                completion = _Completion(task, calls, None, self._failure(exc))
            finally:
                if completion is None:  # a BaseException escaped the handler: the job still needs an outcome
                    completion = _Completion(task, calls, None, Failure(
                        ErrorCategory.TRANSIENT, "BaseException", "handler thread interrupted", ""))
                # The completion is queued before the slot is freed, so a shutdown that waits for
                # in_flight == 0 always finds it.
                self._done.put(completion)
                with self._cond:
                    self._scheduler.done(task.lane)  # frees the slot and promotes the key's next job
                    self._cond.notify()

    # ------------------------------------------------------------------ intake

    def _intake(self, msg: Message) -> None:
        source = _source(msg)
        tracker = self._trackers[(source.topic, source.partition)]
        tracker.track(source.offset)
        self.stats.consumed += 1
        try:
            self._accept(source)
        except Exception as exc:
            # A bug of ours on one odd record must not stop the slot: dead-letter the record, whole, with
            # the exception that tripped us, and go on.
            log.exception("unexpected error on %s[%d]@%d; dead-lettering it", source.topic, source.partition,
                          source.offset)
            self.stats.invalid += 1
            self._settle(source, self._dead_letter(
                source, Failure.from_exception(exc, ErrorCategory.INVALID_PAYLOAD), attempts=0, calls=0))

    def _accept(self, source: SourceRecord) -> None:
        from_retry = source.topic == self.names.retry
        try:
            h.validate_own(source.headers)
            job = decode_job(source.value, source.key, self.settings.worker.max_job_bytes)
            attempts = h.read_int(source.headers, h.ATTEMPTS, 0) if from_retry else 0
            calls = h.read_int(source.headers, h.HANDLER_CALLS, 0) if from_retry else 0
            replays = h.read_int(source.headers, h.REPLAYS, 0)
            due = h.read_int(source.headers, h.RETRY_DUE_AT, 0) if from_retry else 0
        except InvalidPayloadError as exc:
            # Never retried: the bytes will not get better. Settled at once with a dead letter.
            self.stats.invalid += 1
            failure = Failure.from_exception(exc, ErrorCategory.INVALID_PAYLOAD)
            self._settle(source, self._dead_letter(source, failure, attempts=0, calls=0))
            return
        task = _Task(source=source, job=job, attempts_before=attempts, calls_before=calls, replays=replays,
                     lane=self._lane(source, job))
        if due and due > now_ms():
            self._due.push(due, task)
            self._waiting_by_partition[source.partition] = self._waiting_by_partition.get(source.partition, 0) + 1
        else:
            self._ready.append(task)

    def _lane(self, source: SourceRecord, job: EvaluationJob) -> bytes | tuple[str, int]:
        if self.settings.worker.ordering == "partition":
            return (source.topic, source.partition)
        return job.key

    def _release_due(self) -> None:
        if not len(self._due):
            return
        for task in self._due.pop_due(now_ms()):
            self._waiting_by_partition[task.source.partition] -= 1
            self._ready.append(task)

    # ------------------------------------------------------------------ completion and routing

    def _dead_letter(self, source: SourceRecord, failure: Failure, attempts: int, calls: int) -> OutputRecord:
        self.stats.dead_lettered += 1
        return dead_letter_record(source, failure, attempts, calls, self.worker_id, self.names.dlq,
                                  self.settings.dlq_partition(failure.category, source.key), now_ms())

    def _route(self, completion: _Completion) -> OutputRecord:
        task = completion.task
        self.stats.handler_calls += completion.calls
        if completion.result is not None and len(completion.result) <= self.settings.worker.max_result_bytes:
            self.stats.succeeded += 1
            return OutputRecord(topic=self.names.results, key=task.source.key, value=completion.result, headers=[])
        failure = completion.failure
        if failure is None:  # a result too large to produce would block every later commit of the slot
            failure = Failure(ErrorCategory.PERMANENT, "cv_queue.ResultTooLarge",
                              f"the handler's result is {len(completion.result or b'')} bytes, over "
                              f"max_result_bytes {self.settings.worker.max_result_bytes}", "")
        if failure.category == ErrorCategory.INVALID_PAYLOAD:
            self.stats.invalid += 1
        attempts = task.attempts_before + 1
        calls = task.calls_before + completion.calls
        retry = self.settings.retry
        if failure.category.retryable and attempts < retry.max_attempts:
            self.stats.retried += 1
            failed_at = now_ms()
            due = failed_at + retry_delay_ms(attempts, retry, self._rng, failure.retry_after_s)
            return retry_record(task.source, failure, attempts, calls, self.worker_id, self.names.retry, due,
                                failed_at)
        return self._dead_letter(task.source, failure, attempts, calls)

    def _settle(self, source: SourceRecord, output: OutputRecord) -> None:
        self._trackers[(source.topic, source.partition)].settle(source.offset, output)
        self._settled_since_commit += 1

    def _complete(self, completion: _Completion) -> None:
        source = completion.task.source
        try:
            output = self._route(completion)
        except Exception as exc:  # same safety net as intake: never lose the record, never stop the slot
            log.exception("unexpected error routing %s[%d]@%d; dead-lettering it", source.topic, source.partition,
                          source.offset)
            output = self._dead_letter(source, Failure.from_exception(exc, ErrorCategory.PERMANENT),
                                       attempts=completion.task.attempts_before + 1,
                                       calls=completion.task.calls_before + completion.calls)
        self._settle(source, output)

    def _drain_completions(self) -> None:
        while True:
            try:
                completion = self._done.get_nowait()
            except queue.Empty:
                return
            self._complete(completion)

    # ------------------------------------------------------------------ flow control

    # The poll loop reads the scheduler's counters without taking _cond: they are plain ints under the GIL,
    # and a stale value only shifts a pause, a gauge or a poll timeout by one loop turn.
    def _update_pauses(self) -> None:
        assert self._consumer is not None
        buffered = self._scheduler.buffered + len(self._due)
        limit = self.settings.worker.max_buffered
        if buffered >= limit:
            wanted = set(self._source_partitions())
        elif buffered <= limit // 2 or not self._paused:
            wanted = set()
        else:
            wanted = set(self._paused)  # between the marks: keep the current state (hysteresis)
        cap = self.settings.retry.max_waiting_per_partition
        wanted |= {(self.names.retry, p) for p, n in self._waiting_by_partition.items() if n >= cap}
        if wanted != self._paused:
            to_pause = wanted - self._paused
            to_resume = self._paused - wanted
            if to_pause:
                self._consumer.pause([TopicPartition(t, p) for t, p in to_pause])
            if to_resume:
                self._consumer.resume([TopicPartition(t, p) for t, p in to_resume])
            self._paused = wanted

    # ------------------------------------------------------------------ commit

    def _commit(self) -> None:
        """Produce the released outputs and commit the watermark offsets in one transaction."""
        assert self._consumer is not None
        outputs: list[OutputRecord] = []
        offsets: list[TopicPartition] = []
        positions = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(
            [TopicPartition(t, p) for t, p in self._trackers])}
        for (topic, partition), tracker in self._trackers.items():
            before = tracker.committed
            committed, released = tracker.release()
            outputs.extend(released)
            if tracker.open_count == 0 and positions[(topic, partition)] > committed:
                # Nothing open: commit the fetch position, which lies past transaction markers, so an
                # idle worker shows zero lag instead of one phantom record per transaction.
                committed = tracker.committed = positions[(topic, partition)]
            if committed != before:
                offsets.append(TopicPartition(topic, partition, committed))
        self._settled_since_commit = 0
        if not offsets:
            return
        self._transact(outputs, offsets)
        self.stats.commits += 1

    def _transact(self, outputs: list[OutputRecord], offsets: list[TopicPartition]) -> None:
        assert self._producer is not None and self._consumer is not None
        self._in_transaction = True
        try:
            commit_atomically(self._producer, outputs, offsets, self._consumer.consumer_group_metadata(),
                              stopping=self._stopping.is_set)
        finally:
            self._in_transaction = False

    # ------------------------------------------------------------------ the loop

    def _refresh_gauges(self) -> None:
        assert self._consumer is not None
        self.stats.in_flight = self._scheduler.in_flight
        self.stats.buffered = self._scheduler.buffered
        self.stats.waiting_retries = len(self._due)
        lag = 0
        for (topic, partition), tracker in self._trackers.items():
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                lag += max(0, high - max(tracker.committed, 0))
        self.stats.lag = lag

    def _poll_timeout(self) -> float:
        if self._scheduler.in_flight or self._scheduler.buffered:
            return BUSY_POLL_S
        timeout = self.settings.fetch.poll_timeout_ms / 1000
        next_due = self._due.next_due_ms()
        if next_due is not None:
            timeout = min(timeout, max(0.0, (next_due - now_ms()) / 1000))
        if self._settled_since_commit:
            timeout = min(timeout, self.settings.worker.commit_interval_ms / 1000)
        return timeout

    def run(self, stop: threading.Event) -> WorkerStats:
        """Process until `stop` is set; then drain, commit what is complete and close.

        Returns the final stats; `stats.stop_reason` is "stopped", "fenced" (a newer worker owns the slot;
        this one commits nothing more) or "fatal" (the producer cannot go on; a restart recovers).
        """
        self._stopping = stop
        try:
            self._start()
        except KafkaException as exc:
            self._close()
            raise WorkerStartError(f"worker for slot {self.slot.name} could not start: {exc}") from exc
        except BaseException:
            self._close()
            raise
        try:
            self._loop(stop)
            self._shutdown()
            self.stats.stop_reason = "stopped"
        except TransactionFencedError as exc:
            log.error("worker %s was fenced: another worker now owns slot %s (transactional id %s). Exiting "
                      "without committing; the newer worker resumes from the last committed offsets. (%s)",
                      self.worker_id, self.slot.name, self.settings.transactional_id(self.slot), exc)
            self.stats.stop_reason = "fenced"
        except TransactionAbandonedError:
            log.warning("worker %s stopped during a failing transaction; its records will be consumed again",
                        self.worker_id)
            self.stats.stop_reason = "stopped"
        except TransactionFatalError as exc:
            log.error("worker %s cannot continue: %s", self.worker_id, exc)
            self.stats.stop_reason = "fatal"
        finally:
            self._close()
        self._refresh_gauges_safe()
        log.info("worker %s stopped (%s): %s", self.worker_id, self.stats.stop_reason, self.stats.summary())
        return self.stats

    def _loop(self, stop: threading.Event) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        fetch = self.settings.fetch
        worker = self.settings.worker
        last_commit = time.monotonic()
        last_progress = time.monotonic()
        while not stop.is_set():
            messages = poll_batch(consumer, fetch.max_records_per_poll, self._poll_timeout())
            for msg in messages:
                err = msg.error()
                if err is None:
                    self._intake(msg)
                    if len(self._ready) >= OFFER_CHUNK:  # keep handlers busy while the rest is decoded
                        self._offer(self._ready)
                        self._ready = []
                elif err.fatal():
                    raise KafkaException(err)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error on %s[%s]: %s", msg.topic(), msg.partition(), err.str())
            self._drain_completions()
            self._release_due()
            self._offer(self._ready)
            self._ready = []
            self._update_pauses()
            now = time.monotonic()
            if self._settled_since_commit and (
                self._settled_since_commit >= worker.commit_max_records
                or (now - last_commit) * 1000 >= worker.commit_interval_ms
            ):
                self._commit()
                last_commit = now
            if now - last_progress >= worker.progress_interval_s:
                last_progress = now
                self._commit()  # offsets-only when idle: moves committed offsets past transaction markers
                self._report()

    def _report(self) -> None:
        """Report progress when something changed, and otherwise every IDLE_REPORT_EVERY intervals."""
        self._refresh_gauges_safe()
        summary = self.stats.summary()
        self._quiet_reports = 0 if summary != self._last_summary else self._quiet_reports + 1
        if self._quiet_reports % IDLE_REPORT_EVERY:
            return
        self._last_summary = summary
        if self.on_progress is not None:
            self.on_progress(self.stats)
        else:
            log.info("%s", summary)

    def _refresh_gauges_safe(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(RuntimeError):  # consumer already closed
                self._refresh_gauges()

    def _shutdown(self) -> None:
        """Stop taking work, let running jobs finish within the grace period, commit what completed."""
        assert self._consumer is not None
        self._consumer.pause([TopicPartition(t, p) for t, p in self._source_partitions()])
        with self._cond:
            self._taking = False  # jobs buffered behind running ones are not started: redelivered later
        deadline = time.monotonic() + self.settings.worker.shutdown_grace_ms / 1000
        while self._scheduler.in_flight and time.monotonic() < deadline:
            try:
                self._complete(self._done.get(timeout=0.05))
            except queue.Empty:
                continue
        self._drain_completions()
        abandoned = self._scheduler.in_flight
        self._commit()
        if abandoned:
            log.warning("slot %s: %d job(s) still running after the grace period; left uncommitted for "
                        "redelivery", self.slot.name, abandoned)

    def _close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._producer is not None and self._in_transaction:
            try:
                self._producer.abort_transaction(10)
            except KafkaException as exc:
                log.warning("abort on close failed: %s", exc)
            self._in_transaction = False
        self._refresh_gauges_safe()
        if self._consumer is not None:
            with contextlib.suppress(RuntimeError):
                self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.flush(5)
            except KafkaException as exc:  # a fenced producer is in a fatal state; nothing left to send
                log.debug("flush on close: %s", exc)
            self._producer = None
