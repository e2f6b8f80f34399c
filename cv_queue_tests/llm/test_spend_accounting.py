"""The spend gate's books after every way a call can end, through the real openai SDK and the local server: each
reservation is settled or released exactly once (a leaked one would shrink every later window for good), answered
calls cost what their usage says, refused ones nothing."""

import asyncio

import pytest

from cv_queue.evaluation.llm import LLMEvaluator
from cv_queue.llm_server import ThreadedLLMServer
from cv_queue.quota_settings import ModelPrice, SpendBudget
from cv_queue_tests.llm.helpers import CTX, MODEL, evaluate, evaluator_for, make_job

PRICE = ModelPrice(input_per_million=2.0, output_per_million=8.0)


def _evaluator(server: ThreadedLLMServer, **overrides: object) -> LLMEvaluator:
    return evaluator_for(server, prices={MODEL: PRICE}, spend=SpendBudget(limit=1000.0), **overrides)


def _admitted(evaluator: LLMEvaluator, job) -> None:  # type: ignore[no-untyped-def]
    assert evaluator.admit(job) == 0.0
    assert evaluator.spend.reserved > 0


@pytest.mark.parametrize("directive", ["[[llm:429:retry-after=1]]", "[[llm:500]]", "[[llm:400]]", "[[llm:malformed]]",
                                       "[[llm:hang]]"])
def test_every_failed_call_releases_its_reservation(llm_server: ThreadedLLMServer, directive: str) -> None:
    evaluator = _evaluator(llm_server, request_timeout_s=1.0)
    job = make_job(cv_text=f"CV {directive}")
    _admitted(evaluator, job)
    with pytest.raises(Exception):  # noqa: B017 - each directive fails in its own category; tested elsewhere
        evaluate(evaluator, job)
    assert evaluator.spend.reserved == 0.0
    calls = llm_server.stats()["requests"]
    # Only answered calls cost: a malformed answer and its repairs were answered, and billed.
    assert (evaluator.spend.spent() > 0) == (directive == "[[llm:malformed]]"), (directive, calls)


def test_an_answered_call_costs_its_usage_and_frees_its_reservation(llm_server: ThreadedLLMServer) -> None:
    evaluator = _evaluator(llm_server)
    job = make_job()
    _admitted(evaluator, job)
    result = evaluate(evaluator, job)
    assert evaluator.spend.reserved == 0.0
    assert result.usage is not None and result.usage.cost == pytest.approx(evaluator.spend.spent())
    assert evaluator.spend.spent() == pytest.approx(
        PRICE.cost(result.usage.prompt_tokens, result.usage.completion_tokens))


def test_a_cancelled_job_and_a_closed_evaluator_release_theirs(llm_server: ThreadedLLMServer) -> None:
    evaluator = _evaluator(llm_server, request_timeout_s=30.0)
    hung, never_started = make_job(cv_text="CV [[llm:hang]]", job_id="hung"), make_job(job_id="never-started")

    async def scenario() -> None:
        _admitted(evaluator, hung)
        task = asyncio.ensure_future(evaluator(hung, CTX))
        await asyncio.sleep(0.5)  # the call is out, waiting for an answer that never comes
        task.cancel()  # what the pool does at the job timeout
        with pytest.raises(asyncio.CancelledError):
            await task
        assert evaluator.spend.reserved == 0.0
        _admitted(evaluator, never_started)  # admitted, then the worker stops before it starts
        await evaluator.aclose()

    asyncio.run(scenario())
    assert evaluator.spend.reserved == 0.0
