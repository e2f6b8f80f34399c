"""Producing a batch of records and committing consumed offsets as one Kafka transaction.

librdkafka's rules, followed exactly: an error that is *retriable* means "call the same step again"; one
that *requires abort* means "abort, then redo the whole transaction"; a *fatal* one (above all, being
fenced by a newer producer with the same transactional id) ends this producer. Anything else is
treated as fatal rather than looped on, and a caller that is stopping gives up after a few more tries (it must
exit; its records are then consumed again by the next worker).

Giving up never leaves a transaction open when it can be helped: an open transaction holds the last
stable offset of every partition it wrote to, so read_committed consumers of those partitions stall
until transaction.timeout.ms. Before raising TransactionFatalError the transaction is aborted (best
effort: librdkafka refuses to abort in a truly fatal state, and then the broker's timeout or the next
producer's init_transactions() ends it). A fenced producer cannot abort and does not try.

The commit path passes three fault points (see faults.py), which do nothing unless a test sets CVQ_FAULT.
"""

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from cv_queue.kafka.envelope import OutputRecord
from cv_queue.kafka.faults import fault_point
from cv_queue.kafka.stall import WATCHDOG

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
    """The producer cannot go on (authorization, an unexpected state); a restart recovers."""


class TransactionAbandonedError(RuntimeError):
    """The caller is stopping: the transaction was aborted and its records will be consumed again."""


def produce(producer: Producer, out: OutputRecord) -> None:
    """Produce one record, waiting for room when librdkafka's local queue is full."""
    kwargs = {"partition": out.partition} if out.partition is not None else {}
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
) -> None:
    """Produce `outputs` and commit `offsets` atomically, redoing the same transaction after abortable failures (no
    output is dropped, so no handler runs again); once `stopping()`, it gives up after STOPPING_TRIES more.

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
    while True:
        in_transaction = False
        try:
            producer.begin_transaction()
            in_transaction = True
            for out in outputs:
                produce(producer, out)
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
            if err.fatal():
                raise _give_up(producer, in_transaction, f"fatal producer error: {err.str()}", on_abort,
                               stall_limit_s) from exc
            if err.code() in PERMANENT_CODES:  # abortable, but redoing the same transaction can only fail again
                raise _give_up(producer, in_transaction, f"the broker refused the transaction: {err.str()}",
                               on_abort, stall_limit_s) from exc
            if not (err.txn_requires_abort() or err.retriable()):
                raise _give_up(producer, in_transaction, f"unexpected transaction error: {err.str()}",
                               on_abort, stall_limit_s) from exc
            if in_transaction:
                _abort(producer, stall_limit_s)
                on_abort()
            if stopping():
                tries_while_stopping += 1
                if tries_while_stopping >= STOPPING_TRIES:
                    raise TransactionAbandonedError(err.str()) from exc
            delay = min(backoff, 0.5) if stopping() else backoff  # a stopping worker must still exit promptly
            log.warning("transaction failed (%s); retrying in %.1fs", err.str(), delay)
            time.sleep(delay)
            backoff = min(backoff * 2, 5.0)
        except Exception as exc:
            # Not a Kafka error (a bug, a bad record): still close the transaction before it propagates.
            if in_transaction:
                _give_up(producer, in_transaction, f"{type(exc).__name__}: {exc}", on_abort, stall_limit_s)
            raise


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
        raise TransactionFatalError(f"could not abort a failed transaction: {err.str()}") from exc


def _give_up(producer: Producer, in_transaction: bool, reason: str, on_abort: Callable[[], None],
             stall_limit_s: float = DEFAULT_STALL_LIMIT_S) -> TransactionFatalError:
    """Abort the open transaction, if any, on the way out; returns the error for the caller to raise."""
    if not in_transaction:
        return TransactionFatalError(reason)
    try:
        _step(lambda: _watched_abort(producer, GIVE_UP_ABORT_TIMEOUT_S, stall_limit_s), attempts=GIVE_UP_ABORT_ATTEMPTS)
    except KafkaException as exc:
        err = exc.args[0]
        # Expected when the producer itself is in a fatal state: librdkafka refuses every call but close.
        log.error("giving up on a transaction (%s); the abort failed too (%s): it stays open until the next "
                  "producer with this transactional id starts or transaction.timeout.ms passes", reason, err.str())
        return TransactionFatalError(f"{reason} (the open transaction could not be aborted: {err.str()})")
    on_abort()
    log.error("giving up on a transaction (%s); it was aborted", reason)
    return TransactionFatalError(f"{reason} (the transaction was aborted)")
