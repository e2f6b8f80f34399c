"""The provider's quota with real worker processes, Kafka and the local server enforcing limits like a provider.

- Without budget settings, a fleet that outruns the limit is throttled (429s), and throttling is not failure: every
  job ends with exactly one result, none in the DLQ.
- With the model's limit in the settings, four workers share it and stay under it (the provider refuses almost
  nothing), and when two of them stop mid-run the two survivors take the freed budget.
Counted by job id, read_committed."""

import json
import time

import pytest

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.llm_server import ThreadedLLMServer
from cv_queue.messages import EvaluationResult
from cv_queue_tests.kafka.procs import spawn_worker, stop_all
from cv_queue_tests.metrics.scrape import metrics_url, scrape
from cv_queue_tests.support import read_topic, results_by_job, wait_for

MODEL = "local-model"


def _env(server: ThreadedLLMServer, **extra: str) -> dict[str, str]:
    return {
        "CVQ_WORKER__HANDLER": "cv_queue.evaluation.llm:LLMEvaluator",
        "CVQ_WORKER__HANDLER_OPTIONS": "{}",
        "CVQ_WORKER__MAX_IN_FLIGHT": "64",
        "CVQ_LLM__API_KEY": "fleet-key",  # one key for the fleet: the provider counts them together
        "CVQ_LLM__MODEL": MODEL,
        "CVQ_LLM__BASE_URL": server.base_url,
        "CVQ_LLM__MAX_TOKENS": "200",
        "CVQ_RETRY__BASE_DELAY_MS": "500",
        **extra,
    }


def _admitted(server: ThreadedLLMServer) -> int:
    return sum(server.stats()["quota"]["admitted"].values())


def _refused(server: ThreadedLLMServer) -> int:
    return sum(server.stats()["quota"]["refused"].values())


def _fleet(settings, server: ThreadedLLMServer, tmp_path, **env: str) -> dict:
    return {slot.name: spawn_worker(settings, slot.name, tmp_path / f"w{slot.name}.log",
                                    extra_env=_env(server, **env), extra_args=["--metrics-port", "0"])
            for slot in settings.slots()}


def test_a_fleet_without_budget_settings_is_throttled_and_loses_nothing(conn, provisioned, tmp_path,
                                                                         start_llm_server):
    settings = provisioned
    server = start_llm_server(latency_ms=100, requests_per_minute=240)  # a 240-call burst, then 4 a second
    jobs = list(sample_jobs(280, seed=171, prefix="throttled"))
    wanted = {j.job_id for j in jobs}
    workers = _fleet(settings, server, tmp_path)
    try:
        JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
        wait_for(lambda: _refused(server) > 0, 60, "the provider to refuse calls (429)")
        wait_for(lambda: wanted <= set(results_by_job(conn, settings, idle_s=0.3)), 240, "every job's result",
                 interval_s=2)
    finally:
        stop_all(*workers.values())
    results = results_by_job(conn, settings, idle_s=1.0)
    assert set(results) == wanted and max(results.values()) == 1
    assert not read_topic(conn, settings.topic_names.dlq, idle_s=0.5), "a throttled job was dead-lettered"
    assert _refused(server) > 0


def _rate_per_s(server: ThreadedLLMServer, window_s: float) -> float:
    """Calls the provider admitted per second over the next `window_s`."""
    before, began = _admitted(server), time.monotonic()
    time.sleep(window_s)  # a measurement window, not a wait for a condition
    return (_admitted(server) - before) / (time.monotonic() - began)


def test_four_workers_share_the_limit_and_two_survivors_take_the_freed_budget(conn, provisioned, tmp_path,
                                                                               start_llm_server):
    settings = provisioned
    rpm = 720  # 12 calls a second for the whole fleet
    server = start_llm_server(latency_ms=200, requests_per_minute=rpm)
    jobs = list(sample_jobs(330, seed=172, prefix="shared"))
    wanted = {j.job_id for j in jobs}
    budget = {"CVQ_LLM__RATE_LIMITS": json.dumps({MODEL: {"requests_per_minute": rpm}}),
              "CVQ_LLM__BUDGET__FLEET_REFRESH_S": "1",
              "CVQ_LLM__PRICES": json.dumps({MODEL: {"input_per_million": 0.15, "output_per_million": 0.6}})}
    workers = _fleet(settings, server, tmp_path, **budget)
    logs = {slot: tmp_path / f"w{slot}.log" for slot in workers}

    def every_log_says(slots: list[str], text: str) -> bool:
        return all(text in logs[s].read_text(errors="replace") for s in slots)

    try:
        wait_for(lambda: every_log_says(list(workers), "4 live worker(s) share"), 60, "every worker to count 4")
        JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
        wait_for(lambda: _admitted(server) >= 40, 60, "the fleet to get going")
        four = _rate_per_s(server, 5)
        leaving, staying = list(workers)[:2], list(workers)[2:]
        stop_all(*(workers[s] for s in leaving))
        wait_for(lambda: every_log_says(staying, "2 live worker(s) share"), 30, "the survivors to count 2")
        survivors = {s: scrape(metrics_url(logs[s]) or "") for s in staying}
        shares = {s: m.value("cvq_llm_budget_share", model=MODEL) for s, m in survivors.items()}
        two = _rate_per_s(server, 5)
        for slot in leaving:  # back, to finish their partitions' jobs
            workers[slot] = spawn_worker(settings, slot, logs[slot], extra_env=_env(server, **budget))
        wait_for(lambda: wanted <= set(results_by_job(conn, settings, idle_s=0.3)), 240, "every job's result",
                 interval_s=2)
    finally:
        stop_all(*workers.values())
    limit = rpm / 60
    print(f"calls/s: 4 workers {four:.2f}, 2 survivors {two:.2f} (limit {limit:g}); survivors' shares {shares}")
    # Under the limit with four workers (a worker's bucket holds burst_s of its share: a little over, at most)...
    assert four <= limit * 1.2, four
    # ...and the survivors fill it: without their new shares they would make half of it.
    assert two >= limit * 0.75, two
    assert shares == dict.fromkeys(staying, 0.5)
    assert _refused(server) <= 0.02 * _admitted(server), server.stats()["quota"]
    results = results_by_job(conn, settings, idle_s=1.0)
    assert set(results) == wanted and max(results.values()) == 1
    assert not read_topic(conn, settings.topic_names.dlq, idle_s=0.5)
    # What each result cost, from its own usage and the price table; the survivors' counters had counted some.
    usages = [EvaluationResult.model_validate_json(m.value()).usage
              for m in read_topic(conn, settings.topic_names.results, idle_s=0.5)]
    for usage in usages:
        assert usage is not None and usage.cost == pytest.approx(
            (usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.6) / 1e6)
    assert all(m.value("cvq_llm_cost_total", model=MODEL) > 0 for m in survivors.values())
