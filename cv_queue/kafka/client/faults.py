"""Deterministic fault injection for the crash tests: the worker kills itself at a chosen point.

Off unless the environment variable CVQ_FAULT is set, which only the test suite does. Its format is
`<point>@<n>[:<action>]`: the n-th time (1-based) the process passes `<point>`, it performs `<action>`:
- `kill` (default): SIGKILL itself, as a crash or an OOM kill would;
- `fatal`: raise a fatal KafkaException there, as librdkafka does for a producer that cannot go on;
- `hang`: block there for ever, as librdkafka does when it ignores a call's timeout (see stall.py);
- `interrupt`: raise KeyboardInterrupt there, a BaseException that no `except Exception` catches;
- `abortable`: raise an error that requires aborting the transaction, as the broker's refusal of one request does
  (the transaction is aborted and redone with the same outputs).

Points on the commit path (see transaction.commit_atomically), each passed once per transaction:
- `after_produce`: every output of the batch produced, the offsets not yet sent;
- `after_send_offsets`: offsets sent to the transaction, commit not yet called;
- `after_commit`: commit_transaction returned;
- `in_send_offsets`: inside the stall watchdog's watch of send_offsets_to_transaction, just before the call.

And one on the start path: `after_init_transactions`, between fencing earlier producers and re-reading the layout.

A random SIGKILL samples these points by luck; naming them lets a test prove each one. Before either
action the producer's queued records are flushed, so the fault leaves them on the broker inside the open
transaction (the case a restart or an abort must clean up) rather than unsent in local memory.
"""

import logging
import os
import signal
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Producer

ENV_VAR = "CVQ_FAULT"
POINTS = frozenset({"after_produce", "after_send_offsets", "after_commit", "in_send_offsets",
                    "after_init_transactions"})
ACTIONS = frozenset({"kill", "fatal", "hang", "interrupt", "abortable"})
FLUSH_BEFORE_FAULT_S = 10.0

log = logging.getLogger("cv_queue.faults")


@dataclass(slots=True)
class FaultPlan:
    point: str
    at: int
    action: str
    passed: int = 0

    @classmethod
    def parse(cls, text: str) -> "FaultPlan":
        spec, _, action = text.partition(":")
        point, sep, count = spec.partition("@")
        action = action or "kill"
        if point not in POINTS or not sep or not count.isdigit() or int(count) < 1 or action not in ACTIONS:
            raise ValueError(
                f"{ENV_VAR}={text!r}: expected <point>@<n>[:<action>] with point in {sorted(POINTS)}, "
                f"n >= 1 and action in {sorted(ACTIONS)}"
            )
        return cls(point=point, at=int(count), action=action)


def _plan_from_env() -> FaultPlan | None:
    text = os.environ.get(ENV_VAR, "").strip()
    return FaultPlan.parse(text) if text else None


# One mutable slot instead of a rebound global: install() swaps the plan for in-process tests.
_active: list[FaultPlan | None] = [_plan_from_env()]


def install(plan: FaultPlan | None) -> FaultPlan | None:
    """Replace the process's fault plan (None: no faults); returns the previous one. For unit tests."""
    previous = _active[0]
    _active[0] = plan
    return previous


def fault_point(name: str, producer: Producer | None = None) -> None:
    """Mark a point on the commit path; does nothing unless CVQ_FAULT names it."""
    plan = _active[0]
    if plan is None or plan.point != name:
        return
    plan.passed += 1
    if plan.passed != plan.at:
        return
    log.warning("%s=%s@%d:%s: injecting it now", ENV_VAR, plan.point, plan.at, plan.action)
    if producer is not None:
        producer.flush(FLUSH_BEFORE_FAULT_S)
    if plan.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if plan.action == "hang":
        while True:
            time.sleep(3600)
    if plan.action == "interrupt":
        raise KeyboardInterrupt(f"injected KeyboardInterrupt at {name}")
    if plan.action == "abortable":
        raise KafkaException(KafkaError(KafkaError._STATE, f"injected abortable error at {name}",
                                        txn_requires_abort=True))
    raise KafkaException(KafkaError(KafkaError._FATAL, f"injected fatal error at {name}", fatal=True))
