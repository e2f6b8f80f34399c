"""A simulated LLM handler: realistic latency and failures, deterministic when asked to be.

Latency is fixed or lognormal (given its mean and p99). Failures come two ways:
- rates per category, drawn from a RNG seeded by (seed, job_id, call number), so a rerun fails the
  same calls;
- a directive in `job.labels["simulate"]`, for tests and demos that need a job to fail on purpose:
    transient:N            first N handler calls fail transiently
    rate_limited:N[:S]     first N calls are rate limited, with retry-after S seconds
    permanent              every call fails permanently
    transient-until-replay fails transiently until the job has been replayed from the DLQ once
    sleep:MS               this job takes MS milliseconds (a hung handler: sleep:3600000)
    base_exception:NAME[:N] first N calls (default 1) raise the BaseException NAME: KeyboardInterrupt,
                           SystemExit or CancelledError, as a library might from inside a handler
    malformed:N            first N calls fail to parse their "LLM answer" (json.JSONDecodeError)
    invalid_output:N       first N calls return output that fails validation (pydantic ValidationError)

`call_log` (a file path) records every handler call's job id, one line each: the count of paid calls per job.
"""

import asyncio
import json
import math
import os
import random
import time
import zlib

from cv_queue.errors import PermanentJobError, RateLimitedError, TransientJobError
from cv_queue.evaluation.handler import JobContext
from cv_queue.evaluation.scorer import score
from cv_queue.messages import EvaluationJob, EvaluationScores

_Z99 = 2.3263478740408408  # standard normal quantile at 0.99


def lognormal_params(mean_ms: float, p99_ms: float) -> tuple[float, float]:
    """(mu, sigma) of a lognormal with the given mean and 99th percentile."""
    ratio = p99_ms / mean_ms
    if ratio <= 1:
        raise ValueError("p99 must exceed the mean for a lognormal latency")
    disc = _Z99**2 - 2 * math.log(ratio)
    if disc < 0:
        raise ValueError(f"p99/mean = {ratio:.1f} is too wide for a lognormal (max ~14.9)")
    sigma = _Z99 - math.sqrt(disc)
    return math.log(mean_ms) - sigma**2 / 2, sigma


class SimulatedLLM:
    """Sleeps like an LLM call, fails like one, then scores with the deterministic scorer."""

    def __init__(
        self,
        latency_ms: float = 1000.0,
        latency_p99_ms: float | None = None,
        transient_rate: float = 0.0,
        rate_limited_rate: float = 0.0,
        permanent_rate: float = 0.0,
        seed: int = 0,
        call_log: str | None = None,
    ) -> None:
        if not 0 <= transient_rate + rate_limited_rate + permanent_rate <= 1:
            raise ValueError("failure rates must sum to at most 1")
        self.latency_ms = latency_ms
        self._lognormal = lognormal_params(latency_ms, latency_p99_ms) if latency_p99_ms else None
        self.rates = (transient_rate, rate_limited_rate, permanent_rate)
        self.seed = seed
        # Every handler call appends "<job_id>\n" here (O_APPEND, one write per line: lines of concurrent calls and
        # of several processes never interleave), so tests and benchmarks can count paid calls per job.
        self._call_log = os.open(call_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if call_log else None

    def _log_call(self, job: EvaluationJob) -> None:
        if self._call_log is not None:
            os.write(self._call_log, f"{job.job_id}\n".encode())

    def _rng(self, job: EvaluationJob, ctx: JobContext) -> random.Random:
        return random.Random(zlib.crc32(f"{self.seed}:{job.job_id}:{ctx.handler_call}".encode()))

    def _sleep_ms(self, job: EvaluationJob, rng: random.Random) -> float:
        directive = job.labels.get("simulate", "")
        if directive.startswith("sleep:"):
            return float(directive.split(":", 1)[1])
        if self._lognormal:
            return rng.lognormvariate(*self._lognormal)
        return self.latency_ms

    def __call__(self, job: EvaluationJob, ctx: JobContext) -> EvaluationScores:
        self._log_call(job)
        rng = self._rng(job, ctx)
        delay = self._sleep_ms(job, rng)
        if delay > 0:
            time.sleep(delay / 1000)
        return self._outcome(job, ctx, rng)

    def _outcome(self, job: EvaluationJob, ctx: JobContext, rng: random.Random) -> EvaluationScores:
        self._apply_directive(job, ctx)
        draw = rng.random()
        transient, limited, permanent = self.rates
        if draw < transient:
            raise TransientJobError(f"simulated upstream timeout (call {ctx.handler_call})")
        if draw < transient + limited:
            raise RateLimitedError("simulated 429 from the LLM provider", retry_after_s=1.0)
        if draw < transient + limited + permanent:
            raise PermanentJobError("simulated refusal: the model rejected this CV")
        return score(job, job.cv_text or "")

    @staticmethod
    def _apply_directive(job: EvaluationJob, ctx: JobContext) -> None:
        directive = job.labels.get("simulate", "")
        kind, _, arg = directive.partition(":")
        if kind == "transient" and ctx.handler_call <= int(arg or 1):
            raise TransientJobError(f"simulated transient failure {ctx.handler_call}/{arg}")
        if kind == "rate_limited":
            count, _, after = arg.partition(":")
            if ctx.handler_call <= int(count or 1):
                raise RateLimitedError("simulated rate limit", retry_after_s=float(after) if after else None)
        if kind == "permanent":
            raise PermanentJobError("simulated permanent failure")
        if kind == "transient-until-replay" and ctx.replays == 0:
            raise TransientJobError("simulated outage that outlasts the retry topic")
        if kind == "base_exception":
            name, _, count = arg.partition(":")
            if ctx.handler_call <= int(count or 1):
                raise _BASE_EXCEPTIONS[name](f"simulated {name} from inside the handler")
        if kind == "malformed" and ctx.handler_call <= int(arg or 1):
            json.loads('{"cv_match_rate": 0.5, "project_score": ')  # raises JSONDecodeError, as a cut-off answer does
        if kind == "invalid_output" and ctx.handler_call <= int(arg or 1):
            EvaluationScores.model_validate({"cv_match_rate": 7, "project_score": -1})  # raises ValidationError


class AsyncSimulatedLLM(SimulatedLLM):
    """SimulatedLLM as an async handler: its latency is an await, as a real LLM call over HTTP is."""

    async def __call__(self, job: EvaluationJob, ctx: JobContext) -> EvaluationScores:  # type: ignore[override]
        self._log_call(job)
        rng = self._rng(job, ctx)
        delay = self._sleep_ms(job, rng)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        return self._outcome(job, ctx, rng)


_BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "CancelledError": asyncio.CancelledError,
}


class NoopHandler:
    """Returns a fixed score at once: measures the queue itself, not the work. Run inline on the poll thread."""

    inline = True  # never blocks: the worker runs it on the poll thread, without a thread hand-off per job

    _SCORES = EvaluationScores(cv_match_rate=0.5, project_score=5.0, cv_feedback="noop", project_feedback="noop",
                               overall_summary="noop")

    def __call__(self, job: EvaluationJob, ctx: JobContext) -> EvaluationScores:
        return self._SCORES
