"""Answers through the real openai SDK and the local server: scores with usage, repairs, structured-output fallback."""

from collections.abc import Callable

import pytest

from cv_queue.errors import PermanentJobError
from cv_queue.evaluation.llm import PROMPT_VERSION, UnusableAnswerError
from cv_queue.evaluation.llm.evaluator import RAW_ANSWER_CHARS
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.llm_server import ThreadedLLMServer
from cv_queue.messages import Evaluation
from cv_queue_tests.llm.helpers import MODEL, RUBRIC, evaluate, evaluate_all, evaluator_for, make_job

StartServer = Callable[..., ThreadedLLMServer]


def test_a_valid_answer_becomes_an_evaluation_with_usage(llm_server: ThreadedLLMServer) -> None:
    result = evaluate(evaluator_for(llm_server), make_job())
    assert set(result.scores.criteria) == set(RUBRIC)
    assert all(0.0 <= value <= 1.0 for value in result.scores.criteria.values())
    assert 0.0 <= result.scores.cv_match_rate <= 1.0
    assert 0.0 <= result.scores.project_score <= 10.0
    usage = result.usage
    assert usage is not None
    assert (usage.model, usage.prompt_version, usage.calls) == (MODEL, PROMPT_VERSION, 1)
    assert usage.prompt_tokens > 100  # the whole prompt: documents, rubric and schema
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    stats = llm_server.stats()
    assert stats["requests"] == 1
    assert stats["response_formats"] == {"json_schema": 1}


def test_scores_follow_the_job(llm_server: ThreadedLLMServer) -> None:
    evaluator = evaluator_for(llm_server)
    first, again, other = evaluate_all(evaluator, [make_job(), make_job(), make_job(cv_text="A different CV.")])
    assert isinstance(first, Evaluation)
    assert isinstance(again, Evaluation)
    assert isinstance(other, Evaluation)
    assert first.scores == again.scores
    assert first.scores != other.scores


def test_malformed_once_is_repaired(llm_server: ThreadedLLMServer) -> None:
    result = evaluate(evaluator_for(llm_server), make_job(cv_text="CV [[llm:malformed-once]]"))
    assert result.usage is not None
    assert result.usage.calls == 2
    assert llm_server.stats()["outcomes"] == {"malformed": 1, "ok": 1}
    # Tokens of both calls are counted: the repair is part of the job's cost.
    single = evaluate(evaluator_for(llm_server), make_job(cv_text="CV"))
    assert single.usage is not None
    assert result.usage.total_tokens > 2 * single.usage.total_tokens


def test_out_of_range_once_is_repaired(llm_server: ThreadedLLMServer) -> None:
    result = evaluate(evaluator_for(llm_server), make_job(cv_text="CV [[llm:out-of-range-once]]"))
    assert result.usage is not None
    assert result.usage.calls == 2
    assert result.scores.cv_match_rate <= 1.0
    assert llm_server.stats()["outcomes"] == {"out_of_range": 1, "ok": 1}


def test_always_malformed_is_permanent_after_the_repairs(llm_server: ThreadedLLMServer) -> None:
    evaluator = evaluator_for(llm_server, max_repairs=2)
    with pytest.raises(UnusableAnswerError) as caught:
        evaluate(evaluator, make_job(cv_text="CV [[llm:malformed]]"))
    error = caught.value
    assert llm_server.stats()["outcomes"] == {"malformed": 3}
    assert isinstance(error, PermanentJobError)
    # Permanent at once: the worker must not spend its own repair calls on top of ours.
    assert not ErrorClassifier.is_malformed_output(error)
    message = str(error)
    assert "after 3 calls (2 repairs)" in message
    assert "no complete JSON object" in message
    assert len(error.raw_answer) > RAW_ANSWER_CHARS
    assert error.raw_answer[:RAW_ANSWER_CHARS] in message
    assert error.raw_answer not in message
    assert "[truncated]" in message
    assert len(message) <= 2000  # what a dead letter's error message header keeps


def test_always_out_of_range_quotes_the_validation_error(llm_server: ThreadedLLMServer) -> None:
    with pytest.raises(UnusableAnswerError) as caught:
        evaluate(evaluator_for(llm_server, max_repairs=1), make_job(cv_text="CV [[llm:out-of-range]]"))
    assert llm_server.stats()["requests"] == 2
    assert "cv_match_rate: Input should be less than or equal to 1" in str(caught.value)
    assert caught.value.raw_answer in str(caught.value)  # short enough to keep whole


def test_a_cut_off_answer_names_max_tokens(llm_server: ThreadedLLMServer) -> None:
    with pytest.raises(UnusableAnswerError, match="cut off at max_tokens=300: be brief, or raise CVQ_LLM__MAX_TOKENS"):
        evaluate(evaluator_for(llm_server, max_tokens=300, max_repairs=0), make_job(cv_text="CV [[llm:cut-off]]"))


def test_no_repairs_means_one_call(llm_server: ThreadedLLMServer) -> None:
    with pytest.raises(UnusableAnswerError, match=r"after 1 calls \(0 repairs\)"):
        evaluate(evaluator_for(llm_server, max_repairs=0), make_job(cv_text="CV [[llm:malformed-once]]"))
    assert llm_server.stats()["requests"] == 1


def test_prose_and_fences_are_tolerated_without_structured_output(llm_server: ThreadedLLMServer) -> None:
    result = evaluate(evaluator_for(llm_server, structured_output="none"), make_job(cv_text="CV [[llm:fenced]]"))
    assert set(result.scores.criteria) == set(RUBRIC)
    stats = llm_server.stats()
    assert stats["response_formats"] == {"none": 1}
    assert stats["outcomes"] == {"fenced": 1}


def test_json_schema_refused_falls_back_and_remembers(start_llm_server: StartServer) -> None:
    server = start_llm_server(json_schema_supported=False)
    evaluator = evaluator_for(server)
    first = evaluate(evaluator, make_job())
    assert set(first.scores.criteria) == set(RUBRIC)
    assert evaluator.output_mode == "json_object"
    evaluate(evaluator, make_job(cv_text="Another CV"))
    # One refused json_schema request, then JSON mode for both evaluations.
    assert server.stats()["response_formats"] == {"json_schema": 1, "json_object": 2}


def test_falls_back_to_the_prompt_alone(start_llm_server: StartServer) -> None:
    server = start_llm_server(json_schema_supported=False, json_object_supported=False)
    evaluator = evaluator_for(server)
    result = evaluate(evaluator, make_job())
    assert set(result.scores.criteria) == set(RUBRIC)  # from the schema quoted in the prompt
    assert evaluator.output_mode == "none"
    assert server.stats()["response_formats"] == {"json_schema": 1, "json_object": 1, "none": 1}


def test_an_explicit_mode_does_not_fall_back(start_llm_server: StartServer) -> None:
    server = start_llm_server(json_schema_supported=False)
    with pytest.raises(PermanentJobError, match="json_schema is not supported"):
        evaluate(evaluator_for(server, structured_output="json_schema"), make_job())
    assert server.stats()["requests"] == 1


def test_a_request_refused_in_every_mode_changes_no_mode(llm_server: ThreadedLLMServer) -> None:
    evaluator = evaluator_for(llm_server)
    with pytest.raises(PermanentJobError, match="400"):
        evaluate(evaluator, make_job(cv_text="CV [[llm:400]]"))
    assert evaluator.output_mode == "json_schema"  # the 400 was about the request, not about structured output
    assert llm_server.stats()["response_formats"] == {"json_schema": 1, "json_object": 1, "none": 1}
    # Once json_schema has worked, a 400 is the request's fault at once: no more fallback calls.
    evaluate(evaluator, make_job())
    llm_server.reset_stats()
    with pytest.raises(PermanentJobError, match="400"):
        evaluate(evaluator, make_job(cv_text="CV [[llm:400]]"))
    assert llm_server.stats()["requests"] == 1
