"""Replaying dead letters: back to the main topic, or to the parking lot once replayed too often.

The DLQ is read from the committed offsets of the replay group (`cv-queue-dlq-reprocessor`), and each
batch of republished jobs commits together with the DLQ offsets it consumed, in one transaction: a
replay that crashes half-way resumes where it committed and never republishes a letter twice.

Replay handles letters one at a time in offset order, so no output ever waits behind an unfinished letter:
each batch's outputs go out with the offsets just past them (the worker needs an offset map for that, worker/tracker.py;
replay has nothing above its committed offset to record).

Replay never commits past a letter it did not handle (replay it, or park it). Committing past a letter
would hide it from every later replay and from the DLQ depth figures, so the filters that leave a
letter alone stop the scan of its partition there instead:
- categories select DLQ partitions (the DLQ is partitioned by category), so letters of other
  categories are not even read and stay for a later replay;
- min age: a partition's scan stops at the first letter younger than that (`left_too_young`);
- error classes: a partition's scan stops at the first letter of another class (`left_unmatched`).
  A filtered replay therefore handles the matching letters at the head of each partition only; the
  first other letter and everything after it wait for a replay whose filter takes them;
- max messages caps the letters handled in one run.
Replay trusts a letter's category header over its partition: a letter whose header names a category not asked
for is moved, whole and in the same transaction, to its own category's DLQ partitions (`refiled`), whatever the
filters say. It is not replayed as the category of the partition it sat in (an invalid_payload letter is never
replayed by a transient replay, so never by the sensor), nor left to stop every replay of that partition. The
DLQ layout itself is checked first (fleet/dlq_layout.py): settings that would read partitions as other categories are
refused before anything is read.
A letter that does not decode as a dead letter is parked whatever the filters say: it has no class
or age to filter on, and left in place it would stop every filtered replay of its partition. So is a letter
too large for the replay target (the DLQ and the parking lot take 2 MiB, the main topic 1 MiB), or one to refile
that the DLQ no longer takes whole (its max.message.bytes lowered since), and a parked letter too large for the
parking lot is shrunk as the worker shrinks dead letters (provenance kept, value cut).
"""

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from confluent_kafka import OFFSET_BEGINNING, KafkaException, Message, TopicPartition

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory, InvalidPayloadError
from cv_queue.kafka.client.clients import (
    admin_client,
    assigned_consumer,
    message_headers,
    poll_batch,
    transactional_producer,
)
from cv_queue.kafka.client.failures import require_topic
from cv_queue.kafka.client.transaction import commit_atomically
from cv_queue.kafka.fleet.dlq_layout import check_dlq_layout
from cv_queue.kafka.metrics import ReplayMetrics
from cv_queue.kafka.replay.request import ReplayOutcome, ReplayReport, ReplayRequest
from cv_queue.kafka.wire.envelope import OutputRecord, now_ms, parked_headers, read_dead_letter, replayed_headers
from cv_queue.kafka.wire.fit import (
    KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
    SAFETY_MARGIN,
    OutputLimits,
    read_output_limits,
    shrink_dead_letter,
)
from cv_queue.messages import DeadLetter
from cv_queue.settings import KafkaConnection, QueueSettings

log = logging.getLogger("cv_queue.replay")

IDLE_END_S = 2.0  # no records for this long at a partition's end: it is done (an open txn may hold the LSO)


def _headers(msg: Message) -> h.Headers:
    # Undecodable headers read as none: the letter is then undecodable and parked, instead of crashing the replay.
    return message_headers(msg)[0]


def _class_matches(error_class: str, wanted: list[str]) -> bool:
    if not wanted:
        return True
    bare = error_class.rsplit(".", 1)[-1]
    return error_class in wanted or bare in wanted


class _Replayer:
    def __init__(self, conn: KafkaConnection, settings: QueueSettings, request: ReplayRequest,
                 on_progress: Callable[[ReplayReport], None] | None) -> None:
        self.settings = settings
        self.request = request
        self.names = settings.topic_names
        self.target = request.target_topic or self.names.main
        self.on_progress = on_progress
        self.report = ReplayReport(dry_run=request.dry_run)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.metrics = ReplayMetrics()
        self.unflushed: list[tuple[ErrorCategory, ReplayOutcome]] = []  # counted in metrics once committed
        # Before any client of its own: settings that read DLQ partitions as other categories are refused.
        check_dlq_layout(conn, admin_client(conn), settings, record=False)
        self.partitions = settings.dlq_partitions(request.categories)
        self.consumer = assigned_consumer(conn, settings, settings.replay_group_id, role="dlq-replay")
        # Sized from the topics it writes, as the worker's producer is: a letter up to the parking lot's 2 MiB, or
        # one refiled whole into a DLQ that takes more, must not stop the replay of its category for ever
        # (librdkafka refuses a record over message.max.bytes itself).
        self.limits = replay_limits(conn, settings, self.target)
        self.producer = None if request.dry_run else transactional_producer(
            conn, settings.replay_transactional_id, max_message_bytes=self.limits.producer_max_bytes)
        self.pending: list[OutputRecord] = []
        self.next_offsets: dict[int, int] = {}  # partition -> just past the last letter handled
        # Partitions read to their end offset with every letter handled: only these may commit past the
        # last letter, up to the end offset (over the final transaction marker). A partition a filter
        # stopped is never in here; its letters from the stop on are in report.left_*.
        self.finished: set[int] = set()
        self.cutoff = datetime.now(UTC) - timedelta(seconds=request.min_age_s)
        self.ends: dict[int, int] = {}  # end offsets when the run started: the run never reads past them

    def run(self) -> ReplayReport:
        started = time.monotonic()
        try:
            if self.producer is not None:
                self.producer.init_transactions(60)  # also fences a previous, crashed replay
            self._scan()
            self._flush()
        finally:
            self.consumer.close()
            if self.producer is not None:
                try:
                    self.producer.flush(10)
                except (KafkaException, SystemError) as exc:  # after a fatal error: see PartitionWorker._close
                    log.debug("flush on close: %s", exc)
        self.report.seconds = round(time.monotonic() - started, 3)
        self.report.by_category = {}
        for (category, outcome), n in sorted(self.counts.items()):
            self.report.by_category.setdefault(category, {})[outcome] = n
        return self.report

    def _assign(self, tps: list[TopicPartition]) -> dict[int, int]:
        """Assign the DLQ partitions at the group's committed offsets; return their end offsets."""
        committed = self.consumer.committed(tps, timeout=30)
        ends = self.ends
        for tp in committed:
            low, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=15)
            ends[tp.partition] = high
            if max(tp.offset, low) >= high:  # nothing beyond the committed offset (or an empty partition)
                self.finished.add(tp.partition)
        self.consumer.assign([TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                              for tp in committed])
        return ends

    def _scan(self) -> None:
        tps = [TopicPartition(self.names.dlq, p) for p in self.partitions]
        ends = self._assign(tps)
        last_record = time.monotonic()
        while len(self._done) < len(self.partitions) and self._handled < self.request.max_messages:
            messages = poll_batch(self.consumer, 1000, 0.2)
            if messages:
                last_record = time.monotonic()
                self._take(messages, ends)
                if len(self.pending) >= self.request.batch_size:
                    self._flush()
                continue
            for tp in self.consumer.position(tps):
                # Past the last record and its transaction marker. A stopped partition's position may
                # be past letters it fetched but left (they came in one batch): it does not finish.
                if tp.offset >= ends[tp.partition] and tp.partition not in self._stopped:
                    self.finished.add(tp.partition)
            if time.monotonic() - last_record > IDLE_END_S:
                break  # what is left is invisible (an open transaction) or not there

    def _take(self, messages: list[Message], ends: dict[int, int]) -> None:
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue
            if msg.partition() in self._done or self._handled >= self.request.max_messages:
                continue
            if self._handle(msg) and msg.offset() + 1 >= ends[msg.partition()]:
                self.finished.add(msg.partition())
            if msg.partition() in self._done:
                self.consumer.pause([TopicPartition(msg.topic(), msg.partition())])

    @property
    def _handled(self) -> int:
        return self.report.replayed + self.report.parked + self.report.refiled

    @property
    def _stopped(self) -> set[int]:
        """Partitions whose scan a filter stopped at a letter it left in place."""
        return self.report.left_too_young.keys() | self.report.left_unmatched.keys()

    @property
    def _done(self) -> set[int]:
        return self.finished | self._stopped

    def _handle(self, msg: Message) -> bool:
        """Replay, park or refile one letter, or stop its partition there; False when it was left in place."""
        partition, offset = msg.partition(), msg.offset()
        self.report.scanned += 1
        # Read once: after a failed read the client hands back a broken cached list instead of raising again.
        headers = _headers(msg)
        try:
            letter = read_dead_letter(msg.topic(), partition, offset, msg.key(), msg.value(), headers)
        except InvalidPayloadError as exc:
            # Not ours to interpret: keep it, whole, where a human will look.
            self._park(msg, headers, f"undecodable dead letter: {exc}", self.settings.dlq_category(partition))
            return True
        if self._moved_whatever_the_filters(msg, headers, letter):
            return True
        if letter.failed_at > self.cutoff or not self._wait_over(letter):
            self.report.left_too_young[partition] = offset
            return False
        if not _class_matches(letter.error_class, self.request.error_classes):
            self.report.left_unmatched[partition] = offset
            return False
        if letter.replays >= self.request.max_replays:
            self._park(msg, headers, f"replayed {letter.replays} times (cap {self.request.max_replays})",
                       letter.category)
            return True
        self._replay(msg, headers, letter)
        return True

    def _wait_over(self, letter: DeadLetter) -> bool:
        """A letter a rate limiter asked to wait for longer than the budget replays once that wait is over (up to
        retry.rate_limit_budget_s: an absurd Retry-After must not hold its DLQ partition for ever)."""
        asked = letter.retry_after_requested_s
        if asked is None:
            return True
        wait_s = min(asked, self.settings.retry.rate_limit_budget_s)
        return letter.failed_at + timedelta(seconds=wait_s) <= datetime.now(UTC)

    def _moved_whatever_the_filters(self, msg: Message, headers: h.Headers, letter: DeadLetter) -> bool:
        """Refile a letter of a category not asked for, park one cut to fit the DLQ; False for any other letter."""
        if letter.category not in self.request.categories:
            # Its header, not its partition, says what it is (a partition's category depends on settings).
            self._refile(msg, headers, letter.category)
            return True
        if h.last(headers, h.VALUE_TRUNCATED) is not None or h.last(headers, h.KEY_TRUNCATED) is not None:
            # Shrunk to fit the DLQ: what is left is not the job any more, and replaying it would only fail again.
            self._park(msg, headers, "the letter was cut to fit max.message.bytes; the job cannot be replayed",
                       letter.category)
            return True
        return False

    def _replay(self, msg: Message, headers: h.Headers, letter: DeadLetter) -> None:
        """Republish the letter's job to the target, or park it when it would not fit there."""
        replayed = OutputRecord(topic=self.target, key=letter.key, value=letter.value,
                                headers=replayed_headers(letter))
        if not self.limits.fits(replayed):
            self._park(msg, headers, f"{replayed.size} bytes do not fit {self.target} (max.message.bytes "
                       f"{self.limits.limit(self.target) + SAFETY_MARGIN}); it cannot be replayed there",
                       letter.category)
            return
        self.pending.append(replayed)
        self._count(letter.category, ReplayOutcome.REPLAYED)
        self.next_offsets[msg.partition()] = msg.offset() + 1

    def _refile(self, msg: Message, headers: h.Headers, category: ErrorCategory) -> None:
        """File the letter, byte-exact with every header, where its category's letters go; committing past it here
        loses nothing, and a replay of its own category finds it there. A letter the DLQ no longer takes whole (its
        max.message.bytes lowered since it was filed) is parked instead: refiled anyway, the broker would refuse it
        in every run, and each would stop at it."""
        refiled = OutputRecord(topic=self.names.dlq, key=msg.key(), value=msg.value(), headers=headers,
                               partition=self.settings.dlq_partition(category, msg.key()))
        if not self.limits.fits(refiled):
            self._park(msg, headers, f"{refiled.size} bytes do not fit {self.names.dlq} (max.message.bytes "
                       f"{self.limits.limit(self.names.dlq) + SAFETY_MARGIN}); it cannot be refiled to its "
                       f"category's ({category.value}) DLQ partitions", category)
            return
        self.pending.append(refiled)
        self._count(category, ReplayOutcome.REFILED)
        self.next_offsets[msg.partition()] = msg.offset() + 1

    def _park(self, msg: Message, headers: h.Headers, reason: str, category: ErrorCategory) -> None:
        parked = OutputRecord(topic=self.names.parked, key=msg.key(), value=msg.value(),
                              headers=parked_headers(headers, reason, now_ms()))
        if not self.limits.fits(parked):  # fitted as the worker fits dead letters: provenance stays, the value is cut
            parked = shrink_dead_letter(parked, self.limits.limit(self.names.parked))
        self.pending.append(parked)
        self._count(category, ReplayOutcome.PARKED)
        self.next_offsets[msg.partition()] = msg.offset() + 1

    def _count(self, category: ErrorCategory, outcome: ReplayOutcome) -> None:
        self.counts[(category.value, outcome.value)] += 1
        self.unflushed.append((category, outcome))
        setattr(self.report, outcome.value, getattr(self.report, outcome.value) + 1)

    def _flush(self) -> None:
        if not self.next_offsets:
            return
        # A finished partition commits up to the end offset seen at the start, which lies past the final
        # transaction marker (so an emptied DLQ partition shows a depth of 0, not 1), but never past a
        # letter that arrived during the run and was not handled. A stopped partition commits exactly
        # past its last handled letter, which is below the letter it stopped at.
        positions = {tp.partition: tp.offset for tp in self.consumer.position(
            [TopicPartition(self.names.dlq, p) for p in self.next_offsets])}
        stopped = self._stopped
        for partition, offset in self.next_offsets.items():
            if partition in self.finished and partition not in stopped:
                self.next_offsets[partition] = max(offset, min(positions[partition], self.ends[partition]))
        offsets = [TopicPartition(self.names.dlq, p, o) for p, o in sorted(self.next_offsets.items())]
        if self.producer is not None:
            commit_atomically(self.producer, self.pending, offsets, self.consumer.consumer_group_metadata(),
                              stopping=lambda: False, give_up_after_s=self.settings.replay.transaction_give_up_s)
        self.report.committed_offsets.update({tp.partition: tp.offset for tp in offsets})
        if not self.request.dry_run:  # a dry run moves nothing, so it counts nothing
            for category, outcome in self.unflushed:
                if outcome == ReplayOutcome.REFILED:  # still a dead letter: the depth gauges see it move
                    continue
                counters = self.metrics.replayed if outcome == ReplayOutcome.REPLAYED else self.metrics.parked
                counters[category].inc()
        self.unflushed.clear()
        self.pending.clear()
        self.next_offsets.clear()
        if self.on_progress is not None:
            self.on_progress(self.report)


def replay_limits(conn: KafkaConnection, settings: QueueSettings, target: str) -> OutputLimits:
    """max.message.bytes of every topic replay writes: the replay target, the parking lot and the DLQ (refiled
    letters), from the broker (the settings where it won't say)."""
    topics = settings.topics
    main_limit = int(topics.main_config.get("max.message.bytes", KAFKA_DEFAULT_MAX_MESSAGE_BYTES))
    names = settings.topic_names
    fallback = {names.dlq: topics.max_message_bytes, names.parked: topics.max_message_bytes, target: main_limit}
    return read_output_limits(admin_client(conn), list(fallback), fallback)


def replay_dead_letters(
    conn: KafkaConnection,
    settings: QueueSettings,
    request: ReplayRequest,
    on_progress: Callable[[ReplayReport], None] | None = None,
) -> ReplayReport:
    """Replay eligible dead letters and report counts by category and outcome.

    In a dry run `committed_offsets` shows where a real run would have committed.
    """
    # Checked first: a missing target (a typo; auto-creation is off) would fail only at the first commit, and every
    # commit after it, until replay.transaction_give_up_s; this says so at once (TopicStateError, CLI exit 10).
    require_topic(admin_client(conn), request.target_topic or settings.topic_names.main, conn, "the replay target")
    return _Replayer(conn, settings, request, on_progress).run()
