"""Producing a batch of records and committing consumed offsets as one Kafka transaction.

librdkafka's rules, followed exactly: an error that is *retriable* means "call the same step again"; one
that *requires abort* means "abort, then redo the whole transaction"; a *fatal* one (above all, being
fenced by a newer producer with the same transactional id) ends this producer. Anything else is
treated as fatal rather than looped on, and a caller that is stopping gives up after a few more tries (it must
exit; its records are then consumed again by the next worker).

Nor is an abortable error redone for ever: one the broker keeps giving (a deleted or mistyped output topic, a revoked
write ACL) ends the call once `give_up_after_s` passed without a commit since its first failure. Every fatal error
carries the Kafka errors seen on the way, failed deliveries included (a record to a missing topic fails in its
delivery report; the commit only says that some delivery failed), so the caller can tell a denial or a missing topic
from other fatal errors by its exit code (failures.py).

Giving up never leaves a transaction open when it can be helped: an open transaction holds the last
stable offset of every partition it wrote to, so read_committed consumers of those partitions stall
until transaction.timeout.ms. Before raising TransactionFatalError the transaction is aborted (best
effort: librdkafka refuses to abort in a truly fatal state, and then the broker's timeout or the next
producer's init_transactions() ends it). A fenced producer cannot abort and does not try.

The commit path passes three fault points (see faults.py), which do nothing unless a test sets CVQ_FAULT.
"""

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from cv_queue.kafka.client.failures import FailureKind, kind_of
from cv_queue.kafka.client.faults import fault_point
from cv_queue.kafka.client.stall import WATCHDOG
from cv_queue.kafka.wire.envelope import OutputRecord

log = logging.getLogger("cv_queue.transaction")
T = TypeVar("T")

FENCING_CODES = frozenset({
    KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
})
# Errors librdkafka calls abortable that the same transaction would meet again, redone as often as it liked: an
# offset commit's metadata over the broker's offset.metadata.max.bytes (the worker's guard never sends one; a limit
# set above the broker's, or a broker that lowered its own, would).
PERMANENT_CODES = frozenset({KafkaError.OFFSET_METADATA_TOO_LARGE})
STEP_ATTEMPTS = 5
# Tries a stopping worker still gives a failing transaction (0.1 + 0.2 s of backoff): a stop commits its finished
# work through a broker's brief refusal, and still exits promptly when the broker stays away.
STOPPING_TRIES = 3
SEND_OFFSETS_TIMEOUT_S = 30
COMMIT_TIMEOUT_S = 60
ABORT_TIMEOUT_S = 30
# Aborting on the way out is a courtesy to read_committed readers, not a condition for exiting: bounded
# to a few seconds so a worker that lost its broker still exits promptly (and is restarted).
GIVE_UP_ABORT_TIMEOUT_S = 10
GIVE_UP_ABORT_ATTEMPTS = 2
#: A transactional call blocked this long is stuck (librdkafka ignored its own timeout): see stall.py.
DEFAULT_STALL_LIMIT_S = 90.0


class TransactionFencedError(RuntimeError):
    """A newer producer with the same transactional id took over."""


class TransactionFatalError(RuntimeError):
    """The producer cannot go on (authorization, a missing topic, an unexpected state, an error that kept coming back).

    `errors`: the Kafka errors seen on the way (the call's and failed deliveries'), which give its `kind`."""

    def __init__(self, reason: str, errors: Sequence[KafkaError] = ()) -> None:
        super().__init__(reason)
        self.errors = tuple(errors)

    @property
    def kind(self) -> FailureKind:
        return kind_of(self.errors)

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code


class TransactionAbandonedError(RuntimeError):
    """The caller is stopping: the transaction was aborted and its records will be consumed again."""


def produce(producer: Producer, out: OutputRecord,
            on_delivery: Callable[[KafkaError | None, Message], None] | None = None) -> None:
    """Produce one record, waiting for room when librdkafka's local queue is full."""
    kwargs: dict[str, object] = {"partition": out.partition} if out.partition is not None else {}
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers or None, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def _is_fenced(err: KafkaError) -> bool:
    return err.code() in FENCING_CODES


def _step(call: Callable[[], T], attempts: int = STEP_ATTEMPTS) -> T:
    """Run one transaction step, repeating it while librdkafka says the same call may be retried."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0]
            if not err.retriable() or err.txn_requires_abort() or err.fatal() or attempt == attempts:
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def commit_atomically(
    producer: Producer,
    outputs: Sequence[OutputRecord],
    offsets: list[TopicPartition],
    group_metadata: object,
    stopping: Callable[[], bool],
    on_abort: Callable[[], None] = lambda: None,
    stall_limit_s: float = DEFAULT_STALL_LIMIT_S,
    give_up_after_s: float | None = None,
) -> None:
    """Produce `outputs` and commit `offsets` atomically, redoing the same transaction after abortable failures (no
    output is dropped, so no handler runs again); once `stopping()`, it gives up after STOPPING_TRIES more, and
    `give_up_after_s` after its first failure it gives up whatever (TransactionFatalError naming the last error).

    `on_abort` is called for every transaction aborted on the way (for the aborts counter). Sending the offsets
    and committing each run under the stall watchdog: blocked past `stall_limit_s`, the process exits."""

    def send_offsets() -> None:
        with WATCHDOG.watch("send_offsets_to_transaction", stall_limit_s):
            fault_point("in_send_offsets", producer)
            producer.send_offsets_to_transaction(offsets, group_metadata, SEND_OFFSETS_TIMEOUT_S)

    def commit() -> None:
        with WATCHDOG.watch("commit_transaction", stall_limit_s):
            producer.commit_transaction(COMMIT_TIMEOUT_S)

    backoff = 0.1
    tries_while_stopping = 0
    failures = _Failures({out.topic for out in outputs})
    while True:
        in_transaction = False
        failures.begin_try()
        try:
            producer.begin_transaction()
            in_transaction = True
            for out in outputs:
                produce(producer, out, failures.on_delivery)
            fault_point("after_produce", producer)
            _step(send_offsets)
            fault_point("after_send_offsets", producer)
            _step(commit)
            in_transaction = False
            fault_point("after_commit", producer)
            return
        except KafkaException as exc:
            err = exc.args[0]
            if _is_fenced(err):
                raise TransactionFencedError(err.str()) from exc
            failures.add(err)
            if (reason := _not_redone(err, failures, producer)) is not None:
                raise _give_up(producer, in_transaction, reason, on_abort, stall_limit_s, failures.errors) from exc
            if in_transaction:
                _abort(producer, stall_limit_s)
                on_abort()
            if stopping():
                tries_while_stopping += 1
                if tries_while_stopping >= STOPPING_TRIES:
                    raise TransactionAbandonedError(err.str()) from exc
            if give_up_after_s is not None and (failing_s := time.monotonic() - failures.since) >= give_up_after_s:
                # Aborted above: nothing is left open. The outputs are dropped; the restarted process consumes their
                # records again (or, past a lasting denial or a missing topic, an operator has to act first).
                failures.diagnose(producer)
                raise TransactionFatalError(
                    f"the transaction kept failing for {failing_s:.0f}s ({failures.tries} tries) without a commit, "
                    f"past the {give_up_after_s:g}s limit: {failures.describe(err)}. {kind_of(failures.errors).hint}",
                    failures.errors) from exc
            delay = min(backoff, 0.5) if stopping() else backoff  # a stopping worker must still exit promptly
            log.warning("transaction failed (%s); retrying in %.1fs", failures.describe(err), delay)
            time.sleep(delay)
            backoff = min(backoff * 2, 5.0)
        except Exception as exc:
            # Not a Kafka error (a bug, a bad record): still close the transaction before it propagates.
            if in_transaction:
                _give_up(producer, in_transaction, f"{type(exc).__name__}: {exc}", on_abort, stall_limit_s)
            raise


def _not_redone(err: KafkaError, failures: "_Failures", producer: Producer) -> str | None:
    """Why the transaction is not redone after `err`, or None when librdkafka says it may be."""
    if err.fatal() or not (err.txn_requires_abort() or err.retriable()):
        failures.diagnose(producer)
    if err.fatal():
        return f"fatal producer error: {failures.describe(err)}"
    if err.code() in PERMANENT_CODES:  # abortable, but redoing the same transaction can only fail again
        return f"the broker refused the transaction: {err.str()}"
    if not (err.txn_requires_abort() or err.retriable()):
        return f"unexpected transaction error: {failures.describe(err)}"
    return None


#: Delivery reports of records our own abort purged: a consequence of the failure, never its cause.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class _Failures:
    """The errors of a commit's latest failed try: the call's, the failed deliveries' (one per topic and code, so a
    batch of records failing alike is one entry) and, once diagnosed, what the broker says of their topics; how many
    tries failed, and since when."""

    def __init__(self, topics: set[str]) -> None:
        self.output_topics = topics
        self.since = 0.0
        self.tries = 0
        self._call: KafkaError | None = None
        self._deliveries: dict[tuple[str, int], KafkaError] = {}
        self._topics: dict[str, KafkaError] = {}

    def begin_try(self) -> None:
        self._deliveries, self._topics = {}, {}

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and err.code() not in _PURGED:
            self._deliveries.setdefault((str(msg.topic()), err.code()), err)

    def add(self, err: KafkaError) -> None:
        if not self.tries:
            self.since = time.monotonic()
        self.tries += 1
        self._call = err

    def diagnose(self, producer: Producer, timeout_s: float = 5.0) -> None:
        """Ask the broker about each topic the transaction wrote. A record to a deleted topic fails only as timed out
        (message.timeout.ms: clients.py), which says nothing of why; the topic's metadata does (unknown, or not
        authorized). The producer's own metadata request: produce() already made the same ones for these topics."""
        with contextlib.suppress(SystemError):  # a fatal state's purged reports: see PartitionWorker._close
            producer.poll(0)  # delivery reports still queued: the records that failed just before the call did
        for topic in sorted(self.output_topics):
            try:
                meta = producer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            except KafkaException:
                continue  # no answer: the kind stays what the errors say
            if meta is not None and meta.error is not None:
                self._topics[topic] = meta.error

    @property
    def errors(self) -> list[KafkaError]:
        """What the latest try failed on: its kind is the kind of the failure (an error that kept coming back)."""
        return [e for e in (self._call, *self._deliveries.values(), *self._topics.values()) if e is not None]

    def describe(self, err: KafkaError) -> str:
        """The call's error and the deliveries that failed (the commit's own error only says that some did)."""
        text = f"{err.name()}: {err.str()}"
        if self._deliveries:
            text += "; records failed delivery to " + ", ".join(
                f"{topic} ({e.name()}: {e.str()})" for (topic, _), e in self._deliveries.items())
        if self._topics:
            text += "; the broker says of " + ", ".join(
                f"{topic}: {e.name()} ({e.str()})" for topic, e in self._topics.items())
        return text


def _watched_abort(producer: Producer, timeout_s: float, stall_limit_s: float) -> None:
    """abort_transaction can block on a dead coordinator like the commit can (stall.py)."""
    with WATCHDOG.watch("abort_transaction", stall_limit_s):
        producer.abort_transaction(timeout_s)


def _abort(producer: Producer, stall_limit_s: float = DEFAULT_STALL_LIMIT_S) -> None:
    """Abort so the whole transaction can be redone; an abort that fails ends the producer."""
    try:
        _step(lambda: _watched_abort(producer, ABORT_TIMEOUT_S, stall_limit_s))
    except KafkaException as exc:
        err = exc.args[0]
        if _is_fenced(err):
            raise TransactionFencedError(err.str()) from exc
        # An abort that cannot complete leaves the producer in an unknown state: stop here, and let a
        # restart's init_transactions() clean up, rather than begin a new transaction on top of it.
        raise TransactionFatalError(f"could not abort a failed transaction: {err.str()}", [err]) from exc


def _give_up(producer: Producer, in_transaction: bool, reason: str, on_abort: Callable[[], None],
             stall_limit_s: float = DEFAULT_STALL_LIMIT_S,
             errors: Sequence[KafkaError] = ()) -> TransactionFatalError:
    """Abort the open transaction, if any, on the way out; returns the error for the caller to raise."""
    if not in_transaction:
        return TransactionFatalError(reason, errors)
    try:
        _step(lambda: _watched_abort(producer, GIVE_UP_ABORT_TIMEOUT_S, stall_limit_s), attempts=GIVE_UP_ABORT_ATTEMPTS)
    except KafkaException as exc:
        err = exc.args[0]
        # Expected when the producer itself is in a fatal state: librdkafka refuses every call but close.
        log.error("giving up on a transaction (%s); the abort failed too (%s): it stays open until the next "
                  "producer with this transactional id starts or transaction.timeout.ms passes", reason, err.str())
        return TransactionFatalError(f"{reason} (the open transaction could not be aborted: {err.str()})", errors)
    on_abort()
    log.error("giving up on a transaction (%s); it was aborted", reason)
    return TransactionFatalError(f"{reason} (the transaction was aborted)", errors)
