"""The counters a worker reports as progress and returns when it stops."""

from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class WorkerStats:
    slot: str
    worker: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    consumed: int = 0
    skipped: int = 0  # consumed again after a restart, already done per the committed map: not run
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    invalid: int = 0
    handler_calls: int = 0
    timed_out: int = 0
    commits: int = 0
    in_flight: int = 0
    buffered: int = 0
    waiting_retries: int = 0
    held_bytes: int = 0
    paused: int = 0
    abandoned_handlers: int = 0
    lag: int = 0
    stop_reason: str = ""
    stop_error: str = ""  # what ended a worker that stopped on an error (fatal, denied, topic_state)

    def summary(self) -> str:
        return (
            f"slot {self.slot}: consumed {self.consumed} (skipped as done {self.skipped}), "
            f"succeeded {self.succeeded}, retried {self.retried}, "
            f"dead-lettered {self.dead_lettered} (invalid {self.invalid}), timed out {self.timed_out}, "
            f"in flight {self.in_flight}, buffered {self.buffered}, waiting retries {self.waiting_retries}, "
            f"held {self.held_bytes} B, paused partitions {self.paused}, lag {self.lag}, commits {self.commits}, "
            f"abandoned handlers {self.abandoned_handlers}"
        )
