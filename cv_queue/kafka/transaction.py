"""Producing a batch of records and committing consumed offsets as one Kafka transaction.

librdkafka's rules, followed exactly: an error that is *retriable* means "call the same step again"; one
that *requires abort* means "abort, then redo the whole transaction"; a *fatal* one (above all, being
fenced by a newer producer with the same transactional id) ends this producer. Anything else is
treated as fatal rather than looped on, and a caller that is stopping gives up instead of retrying.
"""

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from cv_queue.kafka.envelope import OutputRecord

log = logging.getLogger("cv_queue.transaction")
T = TypeVar("T")

FENCING_CODES = frozenset({
    KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
})
STEP_ATTEMPTS = 5


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


def _raise_if_fatal(err: KafkaError, exc: BaseException) -> None:
    if err.code() in FENCING_CODES:
        raise TransactionFencedError(err.str()) from exc
    if err.fatal():
        raise TransactionFatalError(err.str()) from exc


def _step(call: Callable[[], T]) -> T:
    """Run one transaction step, repeating it while librdkafka says the same call may be retried."""
    for attempt in range(1, STEP_ATTEMPTS + 1):
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0]
            if not err.retriable() or err.txn_requires_abort() or err.fatal() or attempt == STEP_ATTEMPTS:
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def commit_atomically(
    producer: Producer,
    outputs: Sequence[OutputRecord],
    offsets: list[TopicPartition],
    group_metadata: object,
    stopping: Callable[[], bool],
) -> None:
    """Produce `outputs` and commit `offsets` atomically, retrying abortable failures until `stopping()`."""
    backoff = 0.1
    while True:
        in_transaction = False
        try:
            producer.begin_transaction()
            in_transaction = True
            for out in outputs:
                produce(producer, out)
            _step(lambda: producer.send_offsets_to_transaction(offsets, group_metadata, 30))
            _step(lambda: producer.commit_transaction(60))
            return
        except KafkaException as exc:
            err = exc.args[0]
            _raise_if_fatal(err, exc)
            if not (err.txn_requires_abort() or err.retriable()):
                raise TransactionFatalError(f"unexpected transaction error: {err.str()}") from exc
            if in_transaction:
                _abort(producer)
            if stopping():
                raise TransactionAbandonedError(err.str()) from exc
            log.warning("transaction failed (%s); retrying in %.1fs", err.str(), backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def _abort(producer: Producer) -> None:
    try:
        _step(lambda: producer.abort_transaction(30))
    except KafkaException as exc:
        err = exc.args[0]
        _raise_if_fatal(err, exc)
        # An abort that cannot complete leaves the producer in an unknown state: stop here, and let a
        # restart's init_transactions() clean up, rather than begin a new transaction on top of it.
        raise TransactionFatalError(f"could not abort a failed transaction: {err.str()}") from exc
