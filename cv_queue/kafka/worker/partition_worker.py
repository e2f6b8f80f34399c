"""The partition-pair worker: one slot's partitions, processed concurrently, committed exactly once.

How one worker runs (each step lives in its own module):
- Start-up: it checks its topics (startup.py), joins the fleet and checks the recorded layout (fleet/join.py),
  *assigns* its slot's partitions of the main and retry topics (no group rebalancing), fences every worker that could
  be reading them (its own slot's id, and overlapping slots of other layouts: fleet/fencing.py), checks after
  init_transactions that the layout did not change meanwhile, reads each output topic's size limit and the broker's
  metadata limit, and starts from the committed offsets of the worker group and their maps (resume.py).
- Intake (intake.py): each record's `cvq.` headers are parsed once into a Delivery (wire/delivery.py) and its value
  into a job; anything undecodable is dead-lettered at once as invalid_payload.
- Execution: a HandlerPool (pool.py) runs jobs on handler threads, or an AsyncHandlerPool (async_pool.py) runs an
  async handler's jobs on one event loop (a handler that says `inline = True` runs on the poll thread:
  inline_pool.py); each runs one job per key at a time, each within `job_timeout_s`, and
  JobRunner / AsyncJobRunner (execution.py) turn whatever the handler does into exactly one Completion.
- Routing: the Router (routing.py) makes each completion one output: result, retry record or dead letter.
- Commit (commit.py): every output is produced in the next transaction (client/transaction.py), which commits for each
  source partition the lowest offset not done and, as its metadata, the map of done offsets above it (tracker.py,
  offset_map.py). A crash at any point therefore commits an output together with its offset recorded as done, or
  neither; a restart (resume.py) skips what the map records, so no finished job runs twice.
- Flow control (flow.py): a partition holding too many bytes or records, or too many waiting retries, is paused
  on its own; all are paused when the handlers fall behind.
"""

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.handler import JobHandler, load_handler
from cv_queue.kafka.client.auth import authorization_code, denied
from cv_queue.kafka.client.client_log import CLIENT_LOG
from cv_queue.kafka.client.clients import admin_client, assigned_consumer, poll_batch, transactional_producer
from cv_queue.kafka.client.failures import FailureKind, TopicStateError, kind_of_exception
from cv_queue.kafka.client.faults import fault_point
from cv_queue.kafka.client.stall import WATCHDOG
from cv_queue.kafka.client.transaction import TransactionAbandonedError, TransactionFatalError, TransactionFencedError
from cv_queue.kafka.fleet.dlq_layout import check_dlq_layout
from cv_queue.kafka.fleet.fencing import fence_overlapping_slots
from cv_queue.kafka.fleet.join import START_TIMEOUT_S, LayoutMismatchError, WorkerStartError, join_fleet, recheck_layout
from cv_queue.kafka.fleet.presence import FleetPresence
from cv_queue.kafka.metrics import worker_metrics
from cv_queue.kafka.metrics.stats import WorkerStats
from cv_queue.kafka.wire.envelope import now_ms
from cv_queue.kafka.wire.fit import OutputLimits
from cv_queue.kafka.wire.records import Failure, OutputRecord, SourceRecord
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.kafka.worker.commit import WatermarkCommitter, check_still_owner
from cv_queue.kafka.worker.execution import Completion
from cv_queue.kafka.worker.fleet_share import FleetShare
from cv_queue.kafka.worker.flow import FlowControl
from cv_queue.kafka.worker.inflight import PartitionTracker
from cv_queue.kafka.worker.intake import Intake
from cv_queue.kafka.worker.pools import handler_pool
from cv_queue.kafka.worker.progress import ProgressReporter
from cv_queue.kafka.worker.resume import metadata_limit as read_metadata_limit
from cv_queue.kafka.worker.resume import resume_partitions, track_fetched
from cv_queue.kafka.worker.routing import Router
from cv_queue.kafka.worker.startup import check_topics, denied_resource, output_limits
from cv_queue.settings import KafkaConnection, QueueSettings, Slot

__all__ = ["LayoutMismatchError", "PartitionWorker", "WorkerStartError", "WorkerStats"]

log = logging.getLogger("cv_queue.worker")

BUSY_POLL_S = 0.005  # poll timeout while jobs run, so completions are settled within ~5 ms
OFFER_CHUNK = 8  # decoded jobs handed to the handler threads at a time
EXPIRY_CHECK_S = 0.25  # how often running jobs are checked against job_timeout_s
GAUGE_REFRESH_S = 1.0  # how often the gauges (in flight, held bytes, lag, ...) are brought up to date


class HandlersExhaustedError(RuntimeError):
    """The handler pool cannot serve (too many threads stuck in timed-out jobs, or a thread died)."""


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
            # Workers assign partitions; an overlapping slot of the *same* layout ("1-2" next to "0-1") is refused
            # here, and one of another layout is fenced at start-up (fleet/fencing.py).
            raise WorkerStartError(
                f"slot {slot.name} is not one of this queue's slots {[s.name for s in settings.slots()]} "
                f"({settings.topics.partitions} partitions, {settings.topics.partitions_per_worker} per worker)"
            )
        self.conn = conn
        self.settings = settings
        self.slot = slot
        self.names = settings.topic_names
        self.handler = handler or load_handler(settings.worker.handler, settings.worker.handler_options, settings.llm)
        self.on_progress = on_progress
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{slot.name}"
        self.stats = WorkerStats(slot=slot.name, worker=self.worker_id)
        self._classifier = ErrorClassifier(settings.retry.rules)
        self._metrics = worker_metrics(slot.name, self._source_partitions())
        self._consumed = self._metrics.consumed
        self._pool = handler_pool(self.handler, settings, self._classifier, self.worker_id, slot)
        self._router = Router(settings, self.worker_id, OutputLimits(), self.stats, self._metrics)
        self._flow = FlowControl(settings, self._source_partitions(), self.names.retry, self.names.interactive)
        self._trackers: dict[tuple[str, int], PartitionTracker[OutputRecord]] = {}
        self._intake = Intake(settings, self._router, self._track, self._settle)
        self._paused: set[tuple[str, int]] = set()
        self._settled_since_commit = 0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._committer: WatermarkCommitter | None = None
        self._presence: FleetPresence | None = None
        self._share: FleetShare | None = None
        self._stopping = threading.Event()
        self._progress = ProgressReporter(self.stats, self._metrics, on_progress)

    # ------------------------------------------------------------------ start-up

    def _source_partitions(self) -> list[tuple[str, int]]:
        return [(t, p) for t in self.names.consumed for p in self.slot.partitions]

    def _start(self) -> None:
        self._consumer = assigned_consumer(self.conn, self.settings, self.settings.group_id,
                                           role=f"worker-{self.slot.name}")
        check_topics(self._consumer, self.conn, self.settings, self.slot)
        # Dead letters are filed by category partition: settings that would misfile them are refused (exit 9).
        check_dlq_layout(self.conn, admin_client(self.conn), self.settings, record=True)
        # Before fencing anyone: a worker refused for its layout must leave no trace.
        self._presence, recorded = join_fleet(self.conn, self.settings, self.slot)
        limits = output_limits(self.conn, self.settings)
        self._router = self._intake.router = Router(self.settings, self.worker_id, limits, self.stats, self._metrics)
        fence_overlapping_slots(self.conn, self.settings, self.slot, START_TIMEOUT_S, recorded.earlier)
        self._producer = transactional_producer(self.conn, self.settings.transactional_id(self.slot),
                                                self.settings.worker.transaction_timeout_ms,
                                                max_message_bytes=limits.producer_max_bytes)
        # init_transactions fences any older producer with this id and aborts its open transaction, so the
        # committed offsets read next are final.
        with WATCHDOG.watch("init_transactions", START_TIMEOUT_S + self.settings.worker.client_stall_s):
            self._producer.init_transactions(START_TIMEOUT_S)
        fault_point("after_init_transactions")
        recheck_layout(self.conn, self.settings, recorded)
        metadata_limit = read_metadata_limit(admin_client(self.conn), self.settings.worker.offset_metadata_max_bytes)
        self._flow.metadata_limit = metadata_limit
        self._trackers.update(resume_partitions(self._consumer, self.settings, self._source_partitions()))
        self._committer = WatermarkCommitter(self._consumer, self._producer, self._trackers, self._stopping.is_set,
                                             self._metrics, self.settings.worker.client_stall_s, metadata_limit,
                                             at_once=self.settings.worker.release_outputs == "at_once",
                                             give_up_after_s=self.settings.worker.transaction_give_up_s)
        self._pool.start()
        self._share = FleetShare.for_handler(self.handler, self.conn, self.settings, self._metrics, self.worker_id)
        if self._share is not None:
            self._share.start()
        self._metrics.running = 1
        log.info("worker %s started on %s partitions %s (group %s, transactional id %s)", self.worker_id,
                 self.names.main, list(self.slot.partitions), self.settings.group_id,
                 self.settings.transactional_id(self.slot))

    # ------------------------------------------------------------------ intake

    def _track(self, source: SourceRecord) -> bool:
        """Count a fetched record in; False when an earlier worker already finished it (the restored map)."""
        key = (source.topic, source.partition)
        self._consumed[key] += 1
        self.stats.consumed += 1
        if track_fetched(self._trackers[key], self._consumer, source):  # TopicStateError below the committed offset
            return True
        self._metrics.skipped[key] += 1
        self.stats.skipped += 1
        return False

    def _offer_ready(self) -> None:
        self._pool.offer(self._intake.take_ready())

    # ------------------------------------------------------------------ completion

    def _settle(self, source: SourceRecord, output: OutputRecord) -> None:
        self._trackers[(source.topic, source.partition)].settle(source.offset, output, output.size)
        self._settled_since_commit += 1

    def _complete(self, completion: Completion) -> None:
        delivery = completion.task.delivery
        self.stats.handler_calls += completion.calls
        self._metrics.handler_calls += completion.calls
        self._metrics.handler_seconds.observe(completion.seconds)
        try:
            if completion.result is not None:
                output = self._router.success(delivery, completion.result, completion.calls,
                                              completion.task.job.created_at)
            else:
                assert completion.failure is not None
                output = self._router.failure(delivery, completion.failure, completion.calls)
        except Exception as exc:  # same safety net as intake: never lose the record, never stop the slot
            source = delivery.source
            log.exception("unexpected error routing %s[%d]@%d; dead-lettering it", source.topic, source.partition,
                          source.offset)
            output = self._router.dead_letter(delivery, Failure.from_exception(exc, ErrorCategory.PERMANENT),
                                              attempts=delivery.attempts + 1,
                                              calls=delivery.handler_calls + completion.calls)
        self._settle(delivery.source, output)

    def _drain_completions(self) -> None:
        for completion in self._pool.completed():
            self._complete(completion)

    def _expire(self) -> None:
        expired = self._pool.expire()
        for completion in expired:
            source = completion.task.delivery.source
            log.warning("job %s (%s[%d]@%d) exceeded job_timeout_s=%gs: failed as transient, its handler thread "
                        "abandoned and replaced", completion.task.job.job_id, source.topic, source.partition,
                        source.offset, self.settings.worker.job_timeout_s)
            self._complete(completion)
        if self._pool.timed_out > self.stats.timed_out:
            self._metrics.timed_out += self._pool.timed_out - self.stats.timed_out
        self.stats.timed_out = self._pool.timed_out
        if self._pool.broken is not None:
            raise HandlersExhaustedError(self._pool.broken)

    # ------------------------------------------------------------------ flow control

    def _update_pauses(self) -> None:
        assert self._consumer is not None
        wanted = self._flow.wanted(self._pool.buffered, self._trackers, self._intake.waiting_by_partition,
                                   spend_exhausted=self._spend_exhausted())
        if wanted != self._paused:
            to_pause = wanted - self._paused
            to_resume = self._paused - wanted
            if to_pause:
                self._consumer.pause([TopicPartition(t, p) for t, p in to_pause])
            if to_resume:
                self._consumer.resume([TopicPartition(t, p) for t, p in to_resume])
            self._paused = wanted
            self._metrics.set_paused(wanted)

    # ------------------------------------------------------------------ commit

    def _commit(self) -> None:
        """Produce the released outputs and commit the watermark offsets in one transaction."""
        assert self._committer is not None
        self._settled_since_commit = 0
        self._committer.commit()
        self.stats.commits = self._committer.commits

    # ------------------------------------------------------------------ the loop

    def _refresh_gauges(self) -> None:
        self._progress.refresh(self._consumer, self._trackers, self._pool.in_flight, self._pool.buffered,
                               len(self._intake.due), len(self._paused), self._pool.abandoned)

    def _spend_exhausted(self) -> bool:
        return bool(getattr(self.handler, "spend_exhausted", False))

    def _poll_timeout(self) -> float:
        # Jobs held for a spent window wait for hours: polling for them at BUSY_POLL_S would only burn CPU.
        if self._pool.in_flight or (self._pool.buffered and not self._spend_exhausted()):
            return BUSY_POLL_S
        timeout = self.settings.fetch.poll_timeout_ms / 1000
        next_due = self._intake.due.next_due_ms()
        if next_due is not None:
            timeout = min(timeout, max(0.0, (next_due - now_ms()) / 1000))
        if self._settled_since_commit:
            timeout = min(timeout, self.settings.worker.commit_interval_ms / 1000)
        return timeout

    def run(self, stop: threading.Event) -> WorkerStats:
        """Process until `stop` is set; then drain, commit what is complete and close.

        Returns the final stats; `stats.stop_reason` is "stopped", "fenced" (a newer worker owns the slot;
        this one commits nothing more), "fatal" (the producer or consumer cannot go on; a restart recovers),
        "denied" (a write refused: an ACL revoked), "topic_state" (a topic missing or recreated; `stats.stop_error`
        says which) or "handlers_exhausted" (handler threads stuck in timed-out jobs; completed work was committed,
        and a restart frees them). The client/failures.py kinds give the CLI's exit codes.
        """
        self._stopping = stop
        try:
            self._start()
        except KafkaException as exc:
            self._close()
            if (code := authorization_code(exc)) is not None:  # a missing ACL: CLI exit code 7, with what was denied
                raise denied(exc, self.conn, denied_resource(self.settings, self.slot, code)) from exc
            raise WorkerStartError(f"worker for slot {self.slot.name} could not start: {exc}") from exc
        except BaseException:
            self._close()
            raise
        try:
            try:
                self._loop(stop)
                self.stats.stop_reason = "stopped"
            except HandlersExhaustedError as exc:
                log.error("worker %s cannot serve any more: %s. Committing what is complete and exiting.",
                          self.worker_id, exc)
                self.stats.stop_reason = "handlers_exhausted"
            except TopicStateError as exc:  # fetched below the committed offset: its restart applies offset_reset
                log.error("worker %s cannot continue: %s", self.worker_id, exc)
                self.stats.stop_reason, self.stats.stop_error = FailureKind.TOPIC_STATE.value, str(exc)
            self._shutdown()
        except TransactionFencedError as exc:
            log.error("worker %s was fenced: another worker now owns slot %s or an overlapping slot (transactional "
                      "id %s). Exiting without committing; the newer worker resumes from the last committed offsets. "
                      "(%s)", self.worker_id, self.slot.name, self.settings.transactional_id(self.slot), exc)
            self.stats.stop_reason = "fenced"
        except TransactionAbandonedError:
            log.warning("worker %s stopped during a failing transaction; its records will be consumed again",
                        self.worker_id)
            self.stats.stop_reason = "stopped"
        except (TransactionFatalError, KafkaException) as exc:
            log.error("worker %s cannot continue: %s", self.worker_id, exc)
            self.stats.stop_reason, self.stats.stop_error = kind_of_exception(exc).value, str(exc)
        finally:
            self._close()
            self._metrics.running = 0
        self._refresh_gauges()
        log.info("worker %s stopped (%s): %s", self.worker_id, self.stats.stop_reason, self.stats.summary())
        return self.stats

    def _loop(self, stop: threading.Event) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        fetch = self.settings.fetch
        worker = self.settings.worker
        last_commit = last_progress = next_expiry = next_gauges = time.monotonic()
        while not stop.is_set():
            messages = poll_batch(consumer, fetch.max_records_per_poll, self._poll_timeout())
            for msg in messages:
                err = msg.error()
                if err is None:
                    self._intake.take(msg)
                    if len(self._intake.ready) >= OFFER_CHUNK:  # keep handlers busy while the rest is decoded
                        self._offer_ready()
                elif err.fatal():
                    raise KafkaException(err)
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error on %s[%s]: %s", msg.topic(), msg.partition(), err.str())
            now = time.monotonic()
            if now >= next_expiry:
                next_expiry = now + EXPIRY_CHECK_S
                self._expire()
            if now >= next_gauges:
                next_gauges = now + GAUGE_REFRESH_S
                self._refresh_gauges()
            self._drain_completions()
            self._intake.release_due()
            self._offer_ready()
            self._update_pauses()
            if self._settled_since_commit and (
                self._settled_since_commit >= worker.commit_max_records
                or (now - last_commit) * 1000 >= worker.commit_interval_ms
            ):
                self._commit()
                last_commit = now
            if now - last_progress >= worker.progress_interval_s:
                last_progress = now
                self._commit()  # offsets-only when idle: moves committed offsets past transaction markers
                check_still_owner(self._consumer, self._trackers)
                self._refresh_gauges()
                self._progress.report()
                CLIENT_LOG.tick()

    def _shutdown(self) -> None:
        """Stop taking work, let running jobs finish within the grace period, then commit every finished job (not
        only the prefix: the map records the rest), so the next worker runs only what was still running."""
        assert self._consumer is not None
        self._consumer.pause([TopicPartition(t, p) for t, p in self._source_partitions()])
        self._pool.stop_taking()  # jobs buffered behind running ones are not started: redelivered later
        deadline = time.monotonic() + self.settings.worker.shutdown_grace_ms / 1000
        while self._pool.in_flight and time.monotonic() < deadline:
            completion = self._pool.wait_completed(0.05)
            if completion is not None:
                self._complete(completion)
        self._drain_completions()
        abandoned = self._pool.in_flight
        self._commit()
        if abandoned:
            log.warning("slot %s: %d job(s) still running after the grace period; left uncommitted for "
                        "redelivery", self.slot.name, abandoned)

    def _close(self) -> None:
        if self._share is not None:
            self._share.stop()
        self._pool.close()
        if self._committer is not None and (error := self._committer.abort_if_open()) is not None:
            log.warning("abort on close failed: %s", error)
        self._refresh_gauges()
        if self._consumer is not None:
            with contextlib.suppress(RuntimeError):
                self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.flush(5)
            except (KafkaException, SystemError) as exc:  # a fenced producer is in a fatal state: nothing to send
                # (SystemError: confluent-kafka calls the delivery callbacks of the records a fatal error purged with
                # that error still set; the records were never committed, so dropping their reports loses nothing.)
                log.debug("flush on close: %s", exc)
            self._producer = None
        if self._presence is not None:  # last: a re-layout waits for this, so everything is committed or aborted
            self._presence.close()
