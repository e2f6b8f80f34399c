"""The LLM settings in Dagster: the key is an EnvVar reference, and it reaches the evaluator the worker builds."""

import dagster as dg
import pytest
from pydantic import SecretStr

from cv_queue.defs.resources import KafkaResource, QueueResource
from cv_queue.evaluation.handler import load_handler
from cv_queue.evaluation.llm import LLMEvaluator
from cv_queue.settings import LLMSettings


def test_the_api_key_is_an_env_var_reference_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CVQ_LLM__API_KEY", raising=False)
    assert QueueResource.from_env().llm_api_key is None
    monkeypatch.setenv("CVQ_LLM__API_KEY", "sk-never-shown")
    resource = QueueResource.from_env()
    assert isinstance(resource.llm_api_key, dg.EnvVar)
    assert "sk-never-shown" not in repr(resource.llm_api_key)


def test_resource_llm_settings_reach_the_evaluator_the_worker_loads() -> None:
    resource = QueueResource(llm_api_key="sk-from-envvar", llm_model="m-1", llm_base_url="http://127.0.0.1:1/v1",
                             llm_max_concurrent_requests=7)
    settings = resource.settings(KafkaResource(bootstrap_servers="127.0.0.1:1"))
    assert settings.llm.api_key == SecretStr("sk-from-envvar")
    handler = load_handler("cv_queue.evaluation.llm:LLMEvaluator", {}, settings.llm)
    assert isinstance(handler, LLMEvaluator)
    assert (handler.settings.model, handler.settings.base_url, handler.settings.max_concurrent_requests) == (
        "m-1", "http://127.0.0.1:1/v1", 7)
    # Options still win over the settings, and a handler that does not ask for them is built as before.
    assert load_handler("cv_queue.evaluation.llm:LLMEvaluator", {"model": "m-2"}, settings.llm).settings.model == "m-2"
    assert load_handler("cv_queue.evaluation.simulated:NoopHandler", {}, LLMSettings()) is not None
