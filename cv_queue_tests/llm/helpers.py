"""Jobs, settings and an event-loop runner for the LLM evaluator tests."""

import asyncio
from datetime import UTC, datetime
from typing import Any

from cv_queue.evaluation.handler import JobContext
from cv_queue.evaluation.llm import LLMEvaluator
from cv_queue.llm_server import ThreadedLLMServer
from cv_queue.messages import Evaluation, EvaluationJob
from cv_queue.settings import LLMSettings

API_KEY = "sk-test-4f9c2b7e1d0a"
MODEL = "cvq-test-model"
RUBRIC = {"technical_skills": 0.4, "experience": 0.3, "achievements": 0.2, "culture_fit": 0.1}
CTX = JobContext(attempt=1, handler_call=1, replays=0, worker="test", partition=0, offset=0)


def make_job(cv_text: str = "Python engineer, 6 years of Kafka and Postgres.", **changes: Any) -> EvaluationJob:
    fields: dict[str, Any] = {
        "job_id": "job-1", "cv_id": "cv-1", "project_id": "project-1", "cv_text": cv_text,
        "project_text": "A Kafka job queue with retries and a dead-letter topic.",
        "job_description": "Backend engineer: Python, Kafka, Postgres, 5+ years.",
        "study_case_brief": "Build a resilient evaluation queue with retries.",
        "scoring_rubric": dict(RUBRIC), "request_id": "request-1", "created_at": datetime.now(UTC),
    }
    fields.update(changes)
    return EvaluationJob(**fields)


def llm_settings(server: ThreadedLLMServer | str, **overrides: Any) -> LLMSettings:
    base_url = server if isinstance(server, str) else server.base_url
    values: dict[str, Any] = {"base_url": base_url, "api_key": API_KEY, "model": MODEL, "request_timeout_s": 10.0}
    values.update(overrides)
    return LLMSettings(**values)


def evaluator_for(server: ThreadedLLMServer | str, **overrides: Any) -> LLMEvaluator:
    return LLMEvaluator(settings=llm_settings(server, **overrides))


def evaluate_all(evaluator: LLMEvaluator, jobs: list[EvaluationJob]) -> list[Evaluation | BaseException]:
    """All jobs at once on one event loop, like a worker's; outcomes in job order. The client is closed in the
    same loop, as a worker does on shutdown."""

    async def run() -> list[Evaluation | BaseException]:
        try:
            return await asyncio.gather(*(evaluator(job, CTX) for job in jobs), return_exceptions=True)
        finally:
            await evaluator.aclose()

    return asyncio.run(run())


def evaluate(evaluator: LLMEvaluator, job: EvaluationJob) -> Evaluation:
    """One job; its failure raised."""
    [outcome] = evaluate_all(evaluator, [job])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
