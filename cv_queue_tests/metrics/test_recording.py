"""The recording side alone, in this process's registry: the endpoint's life cycle, and what routing, the job
runners, the results' usage and the transaction path record. (What a real worker serves after a real workload:
test_endpoints.py.)"""

import asyncio
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import REGISTRY

from cv_queue.errors import ErrorCategory, PermanentJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client import transaction
from cv_queue.kafka.client.transaction import TransactionFatalError, commit_atomically
from cv_queue.kafka.metrics import start_metrics_server, worker_metrics
from cv_queue.kafka.metrics.stats import WorkerStats
from cv_queue.kafka.wire.delivery import parse_delivery
from cv_queue.kafka.wire.fit import OutputLimits
from cv_queue.kafka.wire.records import Failure, SourceRecord
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.kafka.worker.execution import AsyncJobRunner, JobRunner, Task, result_bytes
from cv_queue.kafka.worker.routing import Router
from cv_queue.messages import Evaluation, EvaluationScores, ModelUsage
from cv_queue.settings import QueueSettings, RetrySettings
from cv_queue_tests.metrics.scrape import scrape
from cv_queue_tests.support import unique
from cv_queue_tests.unit.test_transaction import ScriptedProducer, abortable, fatal

SETTINGS = QueueSettings()
SCORES = EvaluationScores(cv_match_rate=0.5, project_score=5, cv_feedback="f", project_feedback="f",
                          overall_summary="s")


def _task(index: int = 0) -> Task:
    job = next(iter(sample_jobs(1, seed=index, prefix=f"m{index}")))
    source = SourceRecord(SETTINGS.topic_names.main, 0, index, 0, job.key, job.to_bytes(), [])
    return Task(delivery=parse_delivery(source, from_retry=False), job=job, lane=job.key)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_endpoint_serves_on_a_free_port_and_gives_it_back_on_close():
    server = start_metrics_server(0, "127.0.0.1")
    try:
        assert server.port > 0
        served = scrape(server.url)
        assert {"cvq_jobs_succeeded_total", "cvq_dlq_depth", "cvq_job_latency_seconds_bucket"} <= served.declared
        with pytest.raises(OSError):  # the same port again: taken
            start_metrics_server(server.port, "127.0.0.1")
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)
    again = start_metrics_server(server.port, "127.0.0.1")  # a restarted worker gets its port back at once
    again.close()


def test_routing_counts_each_outcome_under_its_slot_and_category():
    slot = unique("slot")
    metrics = worker_metrics(slot)
    router = Router(SETTINGS, "w", OutputLimits(), WorkerStats(slot=slot, worker="w"), metrics)
    delivery = _task().delivery
    created = datetime.now(UTC) - timedelta(seconds=3)
    router.success(delivery, b"{}", calls=1, created_at=created)
    router.failure(delivery, Failure(ErrorCategory.RATE_LIMITED, "X", "m", ""), calls=1)
    router.failure(delivery, Failure(ErrorCategory.PERMANENT, "X", "m", ""), calls=1)
    router.dead_letter(delivery, Failure(ErrorCategory.INVALID_PAYLOAD, "X", "m", ""), attempts=0, calls=0)
    assert _value("cvq_jobs_succeeded_total", slot=slot) == 1
    assert _value("cvq_jobs_retried_total", slot=slot, category="rate_limited") == 1
    assert _value("cvq_jobs_retried_total", slot=slot, category="permanent") == 0
    assert _value("cvq_jobs_dead_lettered_total", slot=slot, category="permanent") == 1
    assert _value("cvq_jobs_dead_lettered_total", slot=slot, category="invalid_payload") == 1
    assert _value("cvq_job_latency_seconds_count", slot=slot) == 1
    assert 3 <= _value("cvq_job_latency_seconds_sum", slot=slot) < 60
    assert _value("cvq_job_latency_seconds_bucket", slot=slot, le="2.5") == 0
    assert _value("cvq_job_latency_seconds_bucket", slot=slot, le="5.0") == 1


def test_the_runners_time_each_delivery_of_a_job():
    def slow(job: object, ctx: object) -> EvaluationScores:
        time.sleep(0.05)
        return SCORES

    def failing(job: object, ctx: object) -> EvaluationScores:
        time.sleep(0.05)
        raise PermanentJobError("no")

    async def slow_async(job: object, ctx: object) -> EvaluationScores:
        await asyncio.sleep(0.05)
        return SCORES

    retry = RetrySettings(inprocess_tries=1)
    for handler in (slow, failing):
        completion = JobRunner(handler, retry, ErrorClassifier(), "w")(_task())  # type: ignore[arg-type]
        assert 0.05 <= completion.seconds < 5
    completion = asyncio.run(AsyncJobRunner(slow_async, retry, ErrorClassifier(), "w")(_task()))  # type: ignore[arg-type]
    assert 0.05 <= completion.seconds < 5


def test_token_usage_of_a_result_is_counted_by_model_and_kind():
    model = unique("model-")
    usage = ModelUsage(model=model, prompt_version="v1", prompt_tokens=700, completion_tokens=120, total_tokens=820,
                       calls=2)
    task = _task()
    ctx = type("Ctx", (), {"attempt": 1, "handler_call": 2, "replays": 0})()
    result_bytes(task, Evaluation(scores=SCORES, usage=usage), ctx, "w")  # type: ignore[arg-type]
    result_bytes(task, SCORES, ctx, "w")  # type: ignore[arg-type]  # bare scores: no usage, nothing counted
    assert _value("cvq_llm_tokens_total", model=model, kind="prompt") == 700
    assert _value("cvq_llm_tokens_total", model=model, kind="completion") == 120
    assert _value("cvq_llm_requests_total", model=model) == 2


@pytest.mark.parametrize(("script", "aborts", "raises"), [
    ({}, 0, None),
    ({"commit": [abortable(), abortable()]}, 2, None),  # aborted twice, redone, committed
    ({"commit": [fatal()]}, 1, TransactionFatalError),  # aborted on the way out
    ({"begin": [fatal()]}, 0, TransactionFatalError),  # nothing open: nothing to abort
])
def test_every_aborted_transaction_is_reported(monkeypatch, script, aborts, raises):
    monkeypatch.setattr(transaction.time, "sleep", lambda _s: None)
    producer = ScriptedProducer(**script)
    counted: list[None] = []

    def call() -> None:
        commit_atomically(producer, [], [TopicPartition("main", 0, 1)], object(),  # type: ignore[arg-type]
                          stopping=lambda: False, on_abort=lambda: counted.append(None))

    if raises is None:
        call()
    else:
        with pytest.raises(raises):
            call()
    assert len(counted) == producer.calls.count("abort") == aborts
