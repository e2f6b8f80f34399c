"""The benchmark scenarios: what each one deploys, described as settings for real worker processes."""

from dataclasses import dataclass

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class Scenario:
    name: str
    partitions: int
    workers: int
    max_in_flight: int  # per worker
    ordering: str  # "key" or "partition"
    description: str

    @property
    def partitions_per_worker(self) -> int:
        return self.partitions // self.workers

    def concurrency(self) -> int:
        """Jobs that can run at once across the deployment (the L in Little's law)."""
        per_worker = self.max_in_flight
        if self.ordering == "partition":
            per_worker = min(per_worker, self.partitions_per_worker)
        return per_worker * self.workers


SCENARIOS = {
    "seed-before": Scenario("seed-before", 1, 1, 1, "partition", "1 partition, 1 worker, one job at a time"),
    "seed-after": Scenario("seed-after", 8, 4, 2, "partition",
                           "8 partitions, 4 workers x 2 partitions, one job at a time per partition"),
    "cv-queue": Scenario("cv-queue", 8, 4, 32, "key",
                         "8 partitions, 4 workers, 32 in flight each, per-key order, exactly-once output"),
    "one-worker": Scenario("one-worker", 8, 1, 32, "key", "one cv-queue worker owning all 8 partitions"),
    # The real LLMEvaluator over HTTP against the local OpenAI-protocol server answering in 1 s.
    "llm-1s": Scenario("llm-1s", 8, 4, 256, "key", "LLMEvaluator (async), 4 workers x 256 calls in flight, 1 s"),
    "llm-1s-threads": Scenario("llm-1s-threads", 8, 4, 32, "key",
                               "the same evaluation on the thread handler path at its default 32 threads"),
}
LLM_SCENARIOS = {"llm-1s": "cv_queue.evaluation.llm:LLMEvaluator",
                 "llm-1s-threads": "cv_queue.evaluation.llm:ThreadedLLMEvaluator"}
BARE = "bare-consumer"
REPLAY = "dlq-replay"
HUNG = "hung-job"  # the cv-queue deployment with one job that never returns at the head of the queue
# The worker's output release, each run once per CVQ_WORKER__RELEASE_OUTPUTS mode (release.py):
HEAD_OF_LINE = "head-of-line"  # 1% of jobs take 20 s and sit at partition heads: how long do the fast ones wait?
CRASH_REWORK = "crash-rework"  # the same, with a worker SIGKILLed mid-run: how many handler calls are paid twice?
RELEASE_SCENARIOS = [HEAD_OF_LINE, CRASH_REWORK]
QUOTA = "llm-quota"  # four LLM workers against a provider quota, without and with the fleet's budget (quota.py)
ALL = [*SCENARIOS, BARE, REPLAY, HUNG, *RELEASE_SCENARIOS, QUOTA]


class Workload(BaseModel):
    """What the jobs do: handler latency and the failure mix."""

    latency_ms: float = Field(100.0, ge=0, description="Mean handler latency (0 = no-op handler).")
    latency_p99_ms: float | None = Field(None, description="p99 for a lognormal latency; None = fixed.")
    transient: float = Field(0.0, ge=0, le=1, description="Fraction of handler calls failing transiently.")
    permanent: float = Field(0.0, ge=0, le=1, description="Fraction of handler calls failing permanently.")
    invalid: float = Field(0.0, ge=0, le=1, description="Fraction of records that are not valid jobs.")

    def handler_env(self) -> dict[str, str]:
        import json

        if self.latency_ms == 0 and not (self.transient or self.permanent):
            return {"CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:NoopHandler",
                    "CVQ_WORKER__HANDLER_OPTIONS": "{}"}
        options = {"latency_ms": self.latency_ms, "transient_rate": self.transient,
                   "permanent_rate": self.permanent, "seed": 7}
        if self.latency_p99_ms:
            options["latency_p99_ms"] = self.latency_p99_ms
        return {"CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
                "CVQ_WORKER__HANDLER_OPTIONS": json.dumps(options)}
