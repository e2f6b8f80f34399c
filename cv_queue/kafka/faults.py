"""Deterministic fault injection for the crash tests: the worker kills itself at a chosen point.

Off unless the environment variable CVQ_FAULT is set, which only the test suite does. Its format is
`<point>@<n>[:<action>]`: the n-th time (1-based) the process passes `<point>`, it performs `<action>`:
- `kill` (default): SIGKILL itself, as a crash or an OOM kill would;
- `fatal`: raise a fatal KafkaException there, as librdkafka does for a producer that cannot go on.

Points on the commit path (see transaction.commit_atomically):
- `after_produce`: every output of the batch produced, the offsets not yet sent;
- `after_send_offsets`: offsets sent to the transaction, commit not yet called;
- `after_commit`: commit_transaction returned.

A random SIGKILL samples these points by luck; naming them lets a test prove each one.
"""

import os
import signal
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException

ENV_VAR = "CVQ_FAULT"
POINTS = frozenset({"after_produce", "after_send_offsets", "after_commit"})
ACTIONS = frozenset({"kill", "fatal"})


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


_plan = _plan_from_env()


def fault_point(name: str) -> None:
    """Mark a point on the commit path; does nothing unless CVQ_FAULT names it."""
    plan = _plan
    if plan is None or plan.point != name:
        return
    plan.passed += 1
    if plan.passed != plan.at:
        return
    if plan.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise KafkaException(KafkaError(KafkaError._FATAL, f"injected fatal error at {name}", fatal=True))
