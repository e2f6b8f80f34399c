"""A spend limit per window, with real worker processes, Kafka and the local server: the fleet spends up to the
limit, pauses intake (nothing fails), the llm_spend check turns ERROR, and intake resumes in the next window.
Counted by job id, read_committed; the spend is read back from the ledger topic the workers write."""

import json
import math
from collections import defaultdict

import dagster as dg

from cv_queue.defs.checks import read_queue_depths, spend_evaluation
from cv_queue.evaluation.llm import LLMEvaluator
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.names import spend_topic
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.fleet.spend_ledger import decode_entry
from cv_queue.messages import EvaluationResult
from cv_queue.quota_settings import ModelPrice, SpendBudget
from cv_queue.settings import LLMSettings
from cv_queue_tests.kafka.procs import stop_all
from cv_queue_tests.llm.test_quota_fleet import MODEL, _fleet
from cv_queue_tests.support import read_topic, results_by_job, wait_for

WINDOW_S = 10
PRICE = ModelPrice(input_per_million=1000.0, output_per_million=0.0)  # a prompt token costs 0.001


def _job_estimate(jobs: list, server_url: str) -> float:
    """The most any of `jobs` is reserved at (the evaluator's own estimate: its prompt, at the input price)."""
    evaluator = LLMEvaluator(settings=LLMSettings(base_url=server_url, api_key="k", model=MODEL, max_tokens=200,
                                                  prices={MODEL: PRICE}))
    window = evaluator.spend.current_window()
    before = 0.0
    estimates = []
    for job in jobs:
        assert evaluator.admit(job) == 0.0
        estimates.append(evaluator.spend.own(window) - before)
        before = evaluator.spend.own(window)
    return max(estimates)


def test_a_spent_window_pauses_intake_until_the_next(conn, provisioned, tmp_path, start_llm_server):
    settings = provisioned
    server = start_llm_server(latency_ms=50)
    jobs = list(sample_jobs(16, seed=181, prefix="spend"))
    wanted = {j.job_id for j in jobs}
    estimate = _job_estimate(jobs, server.base_url)
    limit = 5 * estimate  # five jobs a window
    spend_env = {"CVQ_LLM__PRICES": json.dumps({MODEL: PRICE.model_dump()}),
                 "CVQ_LLM__SPEND__LIMIT": repr(limit), "CVQ_LLM__SPEND__WINDOW_S": str(WINDOW_S),
                 "CVQ_LLM__SPEND__REFRESH_S": "0.5"}
    checked = settings.model_copy(update={"llm": LLMSettings(
        model=MODEL, prices={MODEL: PRICE}, spend=SpendBudget(limit=limit, window_s=WINDOW_S))})
    workers = _fleet(settings, server, tmp_path, **spend_env)
    logs = [tmp_path / f"w{slot}.log" for slot in workers]
    admin = admin_client(conn)

    def check_state() -> dg.AssetCheckEvaluation:
        return spend_evaluation(read_queue_depths(conn, admin, checked), checked)

    try:
        wait_for(lambda: all("started on" in log.read_text(errors="replace") for log in logs), 60,
                 "every worker to start")
        JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
        wait_for(lambda: any("intake paused until the next window" in log.read_text(errors="replace")
                             for log in logs), 60, "a worker to pause for the spent window")
        wait_for(lambda: (ev := check_state()).severity == dg.AssetCheckSeverity.ERROR and not ev.passed,
                 3 * WINDOW_S, "the llm_spend check to turn ERROR")
        wait_for(lambda: wanted <= set(results_by_job(conn, settings, idle_s=0.3)), 12 * WINDOW_S,
                 "every job's result, window after window", interval_s=1)
    finally:
        stop_all(*workers.values())
    results = results_by_job(conn, settings, idle_s=1.0)
    assert set(results) == wanted and max(results.values()) == 1
    assert not read_topic(conn, settings.topic_names.dlq, idle_s=0.5), "a job was failed for the spend limit"
    # The ledger: each worker's last total per window.
    latest = {}
    for msg in read_topic(conn, spend_topic(settings), idle_s=0.5):
        entry = decode_entry(msg.value())
        assert entry is not None, msg.value()
        latest[entry.key] = entry
    by_window: dict[int, float] = defaultdict(float)
    for entry in latest.values():
        by_window[entry.window_start] += entry.spent
    spent_windows = sorted(w for w, spent in by_window.items() if spent > 0)
    print(f"limit {limit:.4f} per {WINDOW_S}s window; spent by window: "
          f"{ {w: round(by_window[w], 4) for w in spent_windows} }")
    usages = [EvaluationResult.model_validate_json(m.value()).usage
              for m in read_topic(conn, settings.topic_names.results, idle_s=0.5)]
    # Each worker keeps to its share of what is left, or one job: the others may each start one job too many.
    overspend = (len(workers) - 1) * max(u.cost or 0.0 for u in usages if u is not None)
    assert all(by_window[w] <= limit + overspend + 1e-9 for w in spent_windows), (by_window, overspend)
    # So sixteen jobs (over three limits' worth) took windows enough, and intake resumed in each.
    assert len(spent_windows) >= math.ceil(sum(by_window.values()) / (limit + overspend)) >= 2, by_window
    total_cost = sum(u.cost or 0.0 for u in usages if u is not None)
    assert abs(sum(by_window.values()) - total_cost) < 1e-6 * max(1.0, total_cost), \
        "the ledger does not add up to what the results cost"
