"""commit_atomically's failure paths, driven by a scripted stand-in for the transactional Producer.

The stand-in only records calls and raises the KafkaErrors a test scripts, flagged retriable, abortable
or fatal as librdkafka flags them; what is under test is which calls commit_atomically makes in answer.
The same paths against a real broker are in cv_queue_tests/kafka/test_crash_points.py.
"""

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cv_queue.kafka.client import faults, transaction
from cv_queue.kafka.client.auth import EXIT_DENIED
from cv_queue.kafka.client.failures import FailureKind
from cv_queue.kafka.client.faults import FaultPlan
from cv_queue.kafka.client.transaction import (
    STEP_ATTEMPTS,
    TransactionAbandonedError,
    TransactionFatalError,
    TransactionFencedError,
    commit_atomically,
)
from cv_queue.kafka.wire.envelope import OutputRecord

OUTPUTS = [OutputRecord(topic="results", key=b"job-1", value=b"{}", headers=[]),
           OutputRecord(topic="results", key=b"job-2", value=b"{}", headers=[])]
OFFSETS = [TopicPartition("main", 0, 42)]


def retriable(code: int = KafkaError._TIMED_OUT) -> KafkaError:
    return KafkaError(code, "try the same call again", retriable=True)


def abortable(code: int = KafkaError._MSG_TIMED_OUT) -> KafkaError:
    return KafkaError(code, "abort and redo the transaction", txn_requires_abort=True)


def fatal(code: int = KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED) -> KafkaError:
    return KafkaError(code, "the producer cannot go on", fatal=True)


class ScriptedProducer:
    """Records every call by name; a call named in `script` raises the scripted errors, one per call, in
    order (None in the list lets that call succeed), then succeeds."""

    def __init__(self, **script: list[KafkaError | BaseException | None]) -> None:
        self.script = {name: list(errors) for name, errors in script.items()}
        self.calls: list[str] = []
        self.produced: list[bytes | None] = []
        self.sent_offsets: list[list[TopicPartition]] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        pending = self.script.get(name)
        if pending:
            error = pending.pop(0)
            if isinstance(error, KafkaError):
                raise KafkaException(error)
            if error is not None:
                raise error

    def begin_transaction(self) -> None:
        self._call("begin")

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                headers: object = None, **kwargs: object) -> None:
        self.produced.append(key)  # recorded as attempted, whether or not the script makes it fail
        self._call("produce")

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: object, timeout: float) -> None:
        self.sent_offsets.append(offsets)
        self._call("send_offsets")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")

    def flush(self, timeout: float) -> int:
        self._call("flush")
        return 0

    def poll(self, timeout: float) -> int:
        return 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> SimpleNamespace:
        """Every topic exists (a deleted one is tested against the broker: cv_queue_tests/kafka/)."""
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None)})


ONE_TRANSACTION = ["begin", "produce", "produce", "send_offsets", "commit"]


@pytest.fixture(autouse=True)
def _no_faults_and_no_waiting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No fault plan unless a test installs one; the backoff sleeps are skipped (they only pace retries)."""
    monkeypatch.setattr(transaction.time, "sleep", lambda _s: None)
    previous = faults.install(None)
    try:
        yield
    finally:
        faults.install(previous)


def commit(producer: ScriptedProducer, stopping: bool = False) -> None:
    commit_atomically(producer, OUTPUTS, OFFSETS, object(), stopping=lambda: stopping)  # type: ignore[arg-type]


def test_a_clean_transaction_makes_each_call_once():
    producer = ScriptedProducer()
    commit(producer)
    assert producer.calls == ONE_TRANSACTION
    assert producer.sent_offsets == [OFFSETS]


def test_retriable_commit_error_calls_commit_again_without_abort():
    producer = ScriptedProducer(commit=[retriable()])
    commit(producer)
    assert producer.calls == [*ONE_TRANSACTION, "commit"]


def test_retriable_send_offsets_error_calls_send_offsets_again():
    producer = ScriptedProducer(send_offsets=[retriable(), retriable()])
    commit(producer)
    assert producer.calls == ["begin", "produce", "produce", "send_offsets", "send_offsets", "send_offsets", "commit"]


def test_commit_retriable_every_time_aborts_and_redoes_the_transaction():
    producer = ScriptedProducer(commit=[retriable()] * STEP_ATTEMPTS)
    commit(producer)
    assert producer.calls == [*ONE_TRANSACTION, *["commit"] * (STEP_ATTEMPTS - 1), "abort", *ONE_TRANSACTION]


def test_abortable_error_aborts_then_redoes_the_whole_transaction():
    producer = ScriptedProducer(send_offsets=[abortable()])
    commit(producer)
    assert producer.calls == ["begin", "produce", "produce", "send_offsets", "abort", *ONE_TRANSACTION]
    assert producer.calls.count("begin") == 2
    assert producer.produced == [b"job-1", b"job-2", b"job-1", b"job-2"]  # every output again, in order
    assert producer.sent_offsets == [OFFSETS, OFFSETS]


def test_abortable_error_on_commit_is_retried_until_it_succeeds():
    producer = ScriptedProducer(commit=[abortable(), abortable()])
    commit(producer)
    assert producer.calls.count("abort") == 2
    assert producer.calls[-len(ONE_TRANSACTION):] == ONE_TRANSACTION


def test_retriable_error_from_begin_does_not_abort_a_transaction_never_begun():
    producer = ScriptedProducer(begin=[retriable(KafkaError._CONFLICT)])
    commit(producer)
    assert producer.calls == ["begin", *ONE_TRANSACTION]


def test_a_failed_abort_is_fatal_and_nothing_is_retried():
    producer = ScriptedProducer(commit=[abortable()], abort=[KafkaError(KafkaError._STATE, "bad state")])
    with pytest.raises(TransactionFatalError, match="could not abort"):
        commit(producer)
    assert producer.calls == [*ONE_TRANSACTION, "abort"]


def test_an_abort_that_keeps_timing_out_is_fatal():
    producer = ScriptedProducer(commit=[abortable()], abort=[retriable()] * STEP_ATTEMPTS)
    with pytest.raises(TransactionFatalError, match="could not abort"):
        commit(producer)
    assert producer.calls == [*ONE_TRANSACTION, *["abort"] * STEP_ATTEMPTS]


@pytest.mark.parametrize("code", [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH])
@pytest.mark.parametrize("step", ["produce", "send_offsets", "commit"])
def test_fenced_raises_fenced_and_never_aborts(code, step):
    producer = ScriptedProducer(**{step: [fatal(code)]})
    with pytest.raises(TransactionFencedError):
        commit(producer)
    assert "abort" not in producer.calls
    assert producer.calls.count("begin") == 1


def test_fenced_while_aborting_raises_fenced():
    producer = ScriptedProducer(commit=[abortable()], abort=[fatal(KafkaError._FENCED)])
    with pytest.raises(TransactionFencedError):
        commit(producer)
    assert producer.calls == [*ONE_TRANSACTION, "abort"]


def test_stopping_still_redoes_a_refused_transaction_a_few_times_then_abandons_it():
    producer = ScriptedProducer(commit=[abortable()] * transaction.STOPPING_TRIES)
    with pytest.raises(TransactionAbandonedError):
        commit(producer, stopping=True)
    assert producer.calls == [*ONE_TRANSACTION, "abort"] * transaction.STOPPING_TRIES


def test_a_stop_commits_its_finished_work_through_a_brief_refusal():
    producer = ScriptedProducer(commit=[abortable()] * (transaction.STOPPING_TRIES - 1))
    commit(producer, stopping=True)
    assert producer.calls == [*ONE_TRANSACTION, "abort"] * (transaction.STOPPING_TRIES - 1) + ONE_TRANSACTION


def test_metadata_over_the_brokers_limit_is_given_up_on_not_redone_for_ever():
    producer = ScriptedProducer(send_offsets=[abortable(KafkaError.OFFSET_METADATA_TOO_LARGE)])
    with pytest.raises(TransactionFatalError, match="refused the transaction"):
        commit(producer)
    assert producer.calls == ["begin", "produce", "produce", "send_offsets", "abort"]


@pytest.mark.parametrize("step", ["produce", "send_offsets", "commit"])
def test_fatal_error_after_begin_aborts_then_raises_fatal(step):
    producer = ScriptedProducer(**{step: [fatal()]})
    with pytest.raises(TransactionFatalError, match=r"fatal producer error.*the transaction was aborted"):
        commit(producer)
    assert producer.calls[-1] == "abort"
    assert producer.calls.count("abort") == 1 and producer.calls.count("begin") == 1


def test_fatal_error_whose_abort_is_refused_is_logged_and_still_fatal(caplog):
    refused = KafkaError(KafkaError._FATAL, "producer is in a fatal state", fatal=True)
    producer = ScriptedProducer(commit=[fatal()], abort=[refused])
    with caplog.at_level(logging.ERROR, logger="cv_queue.transaction"), \
            pytest.raises(TransactionFatalError, match="could not be aborted"):
        commit(producer)
    assert producer.calls == [*ONE_TRANSACTION, "abort"]  # a fatal refusal is not retried
    assert any("abort failed" in r.getMessage() for r in caplog.records)


def test_an_abortable_error_that_keeps_coming_back_ends_after_the_limit_with_the_exit_code_of_its_kind():
    # A revoked write ACL: librdkafka says abort and redo, and every redone transaction meets it again.
    denied = abortable(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    producer = ScriptedProducer(commit=[denied] * 1_000_000)
    with pytest.raises(TransactionFatalError, match=r"kept failing for .* without a commit.*TOPIC_AUTHORIZATION") \
            as ended:
        commit_atomically(producer, OUTPUTS, OFFSETS, object(), stopping=lambda: False,  # type: ignore[arg-type]
                          give_up_after_s=0.05)
    assert ended.value.kind == FailureKind.DENIED and ended.value.exit_code == EXIT_DENIED
    assert producer.calls[-1] == "abort" and producer.calls.count("begin") > 1  # redone until the limit, then ended


def test_unexpected_local_error_from_produce_aborts_then_raises_fatal():
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large")
    producer = ScriptedProducer(produce=[too_large])
    with pytest.raises(TransactionFatalError, match="unexpected transaction error"):
        commit(producer)
    assert producer.calls == ["begin", "produce", "abort"]


def test_fatal_error_from_begin_raises_without_an_abort():
    producer = ScriptedProducer(begin=[fatal()])
    with pytest.raises(TransactionFatalError):
        commit(producer)
    assert producer.calls == ["begin"]


def test_a_fatal_error_after_the_commit_returned_does_not_abort():
    # after_commit is past the commit: nothing is open, so giving up there must not call abort.
    faults.install(FaultPlan.parse("after_commit@1:fatal"))
    producer = ScriptedProducer()
    with pytest.raises(TransactionFatalError):
        commit(producer)
    assert producer.calls == [*ONE_TRANSACTION, "flush"]


def test_a_non_kafka_exception_aborts_and_propagates_unchanged():
    producer = ScriptedProducer(produce=[TypeError("headers must be a list")])
    with pytest.raises(TypeError, match="headers must be a list"):
        commit(producer)
    assert producer.calls == ["begin", "produce", "abort"]


# ---------------------------------------------------------------- fault points


def test_fault_points_are_passed_in_order_between_the_steps(monkeypatch):
    producer = ScriptedProducer()
    monkeypatch.setattr(transaction, "fault_point", lambda name, _producer=None: producer.calls.append(name))
    commit(producer)
    assert producer.calls == ["begin", "produce", "produce", "after_produce", "in_send_offsets", "send_offsets",
                              "after_send_offsets", "commit", "after_commit"]


@pytest.mark.parametrize(("point", "calls_before_abort"), [
    ("after_produce", ["begin", "produce", "produce"]),
    ("after_send_offsets", ["begin", "produce", "produce", "send_offsets"]),
])
def test_an_injected_fatal_fault_inside_the_transaction_aborts_it(point, calls_before_abort):
    faults.install(FaultPlan.parse(f"{point}@1:fatal"))
    producer = ScriptedProducer()
    with pytest.raises(TransactionFatalError, match=f"injected fatal error at {point}"):
        commit(producer)
    assert producer.calls == [*calls_before_abort, "flush", "abort"]  # flushed: the records reach the broker


def test_a_fault_fires_on_the_nth_pass_only():
    faults.install(FaultPlan.parse("after_send_offsets@3:fatal"))
    producer = ScriptedProducer()
    commit(producer)
    commit(producer)
    with pytest.raises(TransactionFatalError):
        commit(producer)
    commit(producer)  # fired once; later passes do nothing
    assert producer.calls.count("commit") == 3


def test_fault_plan_parsing():
    assert FaultPlan.parse("after_commit@3") == FaultPlan(point="after_commit", at=3, action="kill")
    assert FaultPlan.parse("after_produce@1:fatal").action == "fatal"
    assert FaultPlan.parse("after_produce@2:abortable").action == "abortable"
    assert FaultPlan.parse("after_init_transactions@1:interrupt").point == "after_init_transactions"
    for bad in ("after_commit", "nowhere@1", "after_commit@0", "after_commit@x", "after_commit@1:explode"):
        with pytest.raises(ValueError, match="CVQ_FAULT"):
            FaultPlan.parse(bad)


def test_the_kill_action_flushes_then_sigkills_the_process():
    # A process of its own: the kill is real. It must flush the producer first, then die before printing.
    script = (
        "from cv_queue.kafka.client.faults import fault_point\n"
        "class Producer:\n"
        "    def flush(self, timeout):\n"
        "        print('flushed', flush=True)\n"
        "fault_point('after_produce', Producer())\n"
        "fault_point('after_commit', Producer())\n"
        "print('survived', flush=True)\n"
    )
    env = {**os.environ, faults.ENV_VAR: "after_commit@1:kill"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["flushed"]
