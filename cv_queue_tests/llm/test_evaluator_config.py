"""Building the evaluator: CVQ_LLM__* settings, handler options on top, and an API key only from the environment."""

from collections.abc import Callable

import pytest

from cv_queue.evaluation.handler import load_handler
from cv_queue.evaluation.llm import PROMPT_VERSION, LLMConfigError, LLMEvaluator
from cv_queue.llm_server import ThreadedLLMServer
from cv_queue.messages import Evaluation
from cv_queue_tests.llm.helpers import API_KEY, evaluate, llm_settings, make_job

HANDLER_PATH = "cv_queue.evaluation.llm:LLMEvaluator"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "CVQ_LLM__API_KEY", "CVQ_LLM__MODEL", "CVQ_LLM__BASE_URL",
                 "CVQ_LLM__MAX_REPAIRS", "CVQ_LLM__STRUCTURED_OUTPUT"):
        monkeypatch.delenv(name, raising=False)


def test_settings_come_from_the_environment_and_options_override_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVQ_LLM__API_KEY", API_KEY)
    monkeypatch.setenv("CVQ_LLM__MODEL", "from-env")
    monkeypatch.setenv("CVQ_LLM__MAX_REPAIRS", "5")
    evaluator = LLMEvaluator(model="from-options", base_url="http://127.0.0.1:1/v1")
    assert evaluator.settings.model == "from-options"
    assert evaluator.settings.base_url == "http://127.0.0.1:1/v1"
    assert evaluator.settings.max_repairs == 5
    assert evaluator.prompt_version == PROMPT_VERSION


def test_openai_api_key_is_the_fallback(monkeypatch: pytest.MonkeyPatch, llm_server: ThreadedLLMServer) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    evaluator = LLMEvaluator(base_url=llm_server.base_url)
    assert isinstance(evaluate(evaluator, make_job()), Evaluation)


def test_no_key_anywhere_names_both_variables() -> None:
    with pytest.raises(LLMConfigError, match="CVQ_LLM__API_KEY or OPENAI_API_KEY"):
        LLMEvaluator(model="m")


def test_the_key_is_never_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVQ_LLM__API_KEY", API_KEY)
    with pytest.raises(LLMConfigError, match="CVQ_LLM__API_KEY") as caught:
        LLMEvaluator(api_key="sk-in-options-1234")
    assert "sk-in-options-1234" not in str(caught.value)
    # Through the worker's loader too: the error must not echo the options, which hold the key.
    with pytest.raises(LLMConfigError) as caught:
        load_handler(HANDLER_PATH, {"api_key": "sk-in-options-1234"})
    assert "sk-in-options-1234" not in str(caught.value)


def test_unknown_options_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVQ_LLM__API_KEY", API_KEY)
    with pytest.raises(LLMConfigError, match=r"unknown LLM options \['modle'\]"):
        LLMEvaluator(modle="gpt-4o")


def test_invalid_option_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVQ_LLM__API_KEY", API_KEY)
    with pytest.raises(ValueError, match="structured_output"):
        LLMEvaluator(structured_output="xml")


def test_the_key_stays_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVQ_LLM__API_KEY", API_KEY)
    evaluator = LLMEvaluator()
    assert API_KEY not in repr(evaluator)
    assert API_KEY not in repr(evaluator.settings)
    assert API_KEY not in str(vars(evaluator))


def test_loaded_by_the_worker_path(monkeypatch: pytest.MonkeyPatch,
                                   start_llm_server: Callable[..., ThreadedLLMServer]) -> None:
    server = start_llm_server(api_key=API_KEY)
    monkeypatch.setenv("CVQ_LLM__API_KEY", API_KEY)
    handler = load_handler(HANDLER_PATH, {"base_url": server.base_url, "model": "loaded-model"})
    assert isinstance(handler, LLMEvaluator)
    result = evaluate(handler, make_job())
    assert result.usage is not None
    assert result.usage.model == "loaded-model"
    assert server.stats()["outcomes"] == {"ok": 1}


def test_a_spend_limit_without_a_price_for_the_model_is_refused():
    from cv_queue.quota_settings import SpendBudget

    with pytest.raises(LLMConfigError, match="no price for model"):
        LLMEvaluator(settings=llm_settings("http://127.0.0.1:9/v1", spend=SpendBudget(limit=5.0)))
