"""Many evaluations on one event loop: bounded by max_concurrent_requests, and concurrent up to it."""

import time
from collections.abc import Callable

from cv_queue.llm_server import ThreadedLLMServer
from cv_queue.messages import Evaluation
from cv_queue_tests.llm.helpers import evaluate_all, evaluator_for, make_job

StartServer = Callable[..., ThreadedLLMServer]


def test_the_semaphore_bounds_requests_in_flight(start_llm_server: StartServer) -> None:
    server = start_llm_server(latency_ms=100)
    limit = 4
    jobs = [make_job(job_id=f"job-{n}", cv_text=f"CV number {n}") for n in range(40)]
    outcomes = evaluate_all(evaluator_for(server, max_concurrent_requests=limit), jobs)
    assert all(isinstance(outcome, Evaluation) for outcome in outcomes), outcomes
    stats = server.stats()
    assert stats["requests"] == 40
    assert 2 <= stats["max_in_flight"] <= limit


def test_200_evaluations_run_concurrently(start_llm_server: StartServer) -> None:
    server = start_llm_server(latency_ms=200)
    jobs = [make_job(job_id=f"job-{n}", cv_text=f"CV number {n}") for n in range(200)]
    started = time.monotonic()
    outcomes = evaluate_all(evaluator_for(server, request_timeout_s=30), jobs)
    elapsed = time.monotonic() - started
    failures = [outcome for outcome in outcomes if not isinstance(outcome, Evaluation)]
    assert failures == []
    # One at a time would take 200 x 0.2 s = 40 s; the bound is generous for a shared two-core machine.
    assert elapsed < 20.0
    assert server.stats()["max_in_flight"] > 10
