"""`llm-quota`: four workers against a provider that enforces a quota, with and without the fleet's budget.

The local OpenAI-protocol server limits requests and tokens per minute per key and answers in 1 s. Four workers run
the real LLMEvaluator at their defaults; the jobs (10% interactive, enqueued after the bulk ones) are produced at
once. Two rows, in one run: `budget: false` is the queue without rate-limit settings (throttled by 429s alone, the
baseline), `budget: true` with the model's limits in CVQ_LLM__RATE_LIMITS. Each row reports the share of the binding
limit used (what the provider admitted, over the limit times the run's minutes), 429s as a share of calls, jobs
dead-lettered or parked, interactive and bulk p99 latency (produce to result, read_committed), and the total cost
of the results from their usage and CVQ_LLM__PRICES.
"""

import time
from pathlib import Path

from cv_queue.bench.runner import (
    BenchError,
    Progress,
    _latencies_ms,
    _produce_all,
    _settings,
    _spawn_workers,
    _stop,
    _wait_all,
)
from cv_queue.bench.scenarios import QUOTA, Scenario, Workload
from cv_queue.bench.watch import SettleWatcher, read_values
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.messages import EvaluationResult
from cv_queue.settings import KafkaConnection

MODEL = "bench-model"
PRICES = '{"bench-model": {"input_per_million": 0.15, "output_per_million": 0.6}}'
INTERACTIVE_SHARE = 0.10
SCENARIO = Scenario(QUOTA, 8, 4, 256, "key", "LLMEvaluator, 4 workers at their defaults, against a provider quota")


def run_llm_quota(conn: KafkaConnection, jobs: int, log_dir: Path, progress: Progress, rpm: float = 1200,
                  tpm: float = 200_000, max_tokens: int = 200) -> list[dict]:
    """The baseline row (no budget settings), then the budget row, on fresh topics and a fresh server each."""
    return [_row(conn, jobs, log_dir, progress, rpm, tpm, max_tokens, budget) for budget in (False, True)]


def _row(conn: KafkaConnection, jobs: int, log_dir: Path, progress: Progress, rpm: float, tpm: float,
         max_tokens: int, budget: bool) -> dict:
    from cv_queue.llm_server import server_process  # the provider's stand-in

    settings = _settings(f"bench-quota-{int(budget)}-{int(time.time() * 1000)}", 8, 2)
    provision(admin_client(conn), topic_specs(settings))
    interactive_count = round(jobs * INTERACTIVE_SHARE)
    bulk = [(j.key, j.to_bytes()) for j in sample_jobs(jobs - interactive_count, seed=191, prefix="bulk")]
    urgent = [(j.key, j.to_bytes()) for j in sample_jobs(interactive_count, seed=192, prefix="urgent")]
    names = settings.topic_names
    label = f"{QUOTA} ({'with' if budget else 'without'} budget)"
    with server_process("--latency-ms", "1000", "--rpm", f"{rpm:g}", "--tpm", f"{tpm:g}") as server:
        env = {"CVQ_WORKER__HANDLER": "cv_queue.evaluation.llm:LLMEvaluator", "CVQ_WORKER__HANDLER_OPTIONS": "{}",
               "CVQ_LLM__BASE_URL": server.base_url, "CVQ_LLM__API_KEY": "bench-fleet-key", "CVQ_LLM__MODEL": MODEL,
               "CVQ_LLM__MAX_TOKENS": str(max_tokens), "CVQ_LLM__PRICES": PRICES,
               # Defaults otherwise: the worker's in-flight limit and the retry policy are the product's own.
               "CVQ_WORKER__MAX_IN_FLIGHT": str(SCENARIO.max_in_flight), "CVQ_RETRY__BASE_DELAY_MS": "1000"}
        if budget:
            env["CVQ_LLM__RATE_LIMITS"] = f'{{"{MODEL}": {{"requests_per_minute": {rpm:g}, ' \
                                          f'"tokens_per_minute": {tpm:g}}}}}'
        watcher = SettleWatcher(conn, [names.results, names.dlq])
        watcher.start()
        procs = _spawn_workers(SCENARIO, settings, Workload(latency_ms=1000.0), log_dir, env)
        try:
            started = time.monotonic()
            sent_at = _produce_all(conn, names.main, bulk)
            sent_at.update(_produce_all(conn, names.interactive, urgent))
            _wait_all(watcher, jobs, label, progress, timeout_s=max(600.0, jobs * 2.0), procs=procs)
            seconds = max(watcher.first_seen.values()) - started
            stats = server.stats()
        finally:
            _stop(procs)
            watcher.stop()
    quota = stats["quota"]
    admitted, refused = sum(quota["admitted"].values()), sum(quota["refused"].values())
    tokens = sum(quota["tokens"].values())
    minutes = seconds / 60
    share = max(admitted / (rpm * minutes), tokens / (tpm * minutes))
    letters = len(read_values(conn, names.dlq))
    parked = len(read_values(conn, names.parked))
    results = [EvaluationResult.model_validate_json(value) for value in read_values(conn, names.results)]
    cost = sum((r.usage.cost or 0.0) for r in results if r.usage is not None)
    urgent_keys = {key for key, _ in urgent}
    _, interactive_p99 = _latencies_ms({k: v for k, v in sent_at.items() if k in urgent_keys}, watcher.first_seen)
    _, bulk_p99 = _latencies_ms({k: v for k, v in sent_at.items() if k not in urgent_keys}, watcher.first_seen)
    if len(results) + letters < jobs:
        raise BenchError(f"{label}: {jobs - len(results) - letters} job(s) without an outcome")
    return {
        "scenario": QUOTA, "budget": budget, "jobs": jobs, "interactive_jobs": interactive_count,
        "seconds": round(seconds, 1), "jobs_per_s": round(jobs / seconds, 2),
        "rpm_limit": rpm, "tpm_limit": tpm, "max_tokens": max_tokens,
        "admitted_calls": admitted, "admitted_tokens": tokens,
        "binding_limit": "requests" if admitted / rpm >= tokens / tpm else "tokens",
        "share_of_limit_used": round(share, 3), "calls_refused_429": refused,
        "share_429": round(refused / max(1, admitted + refused), 4),
        "dead_lettered": letters, "parked": parked,
        "interactive_p99_ms": interactive_p99, "bulk_p99_ms": bulk_p99,
        "interactive_over_bulk_p99": round(interactive_p99 / bulk_p99, 3) if bulk_p99 else None,
        "total_cost": round(cost, 6), "lost": max(0, jobs - len(watcher.first_seen)), "duplicated": watcher.duplicates,
        "handler_ms": 1000.0, "latency_p50_ms": None, "latency_p99_ms": None, "efficiency": None,
        "peak_worker_rss_mb": None, "in_flight": SCENARIO.concurrency(), "partitions": 8, "workers": 4,
    }
