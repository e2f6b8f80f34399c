"""The local OpenAI-compatible server as a process: announces its port, speaks the protocol, stops on SIGTERM."""

import json
import signal
import urllib.request

import openai
import pytest

from cv_queue.evaluation.llm.schema import answer_schema, response_format
from cv_queue.llm_server import server_process


def test_command_line_server() -> None:
    with server_process("--latency-ms", "5") as server:
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=10) as response:
            models = json.load(response)
        assert models["object"] == "list"
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=10)
        try:
            schema = answer_schema(["depth", "clarity"])
            completion = client.chat.completions.create(
                model="any-model", messages=[{"role": "user", "content": "Evaluate."}],
                response_format=response_format("json_schema", schema))  # type: ignore[arg-type]
        finally:
            client.close()
        assert completion.object == "chat.completion"
        assert completion.model == "any-model"
        assert completion.choices[0].finish_reason == "stop"
        answer = json.loads(completion.choices[0].message.content or "")
        assert list(answer) == list(schema["properties"])
        assert set(answer["criteria"]) == {"depth", "clarity"}
        assert completion.usage is not None
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
        assert server.stats()["outcomes"] == {"ok": 1}

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0


def test_command_line_key_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_LLM_KEY", "sk-local-5e6f")
    with server_process("--require-key-from-env", "LOCAL_LLM_KEY") as server:
        for key, works in (("sk-local-5e6f", True), ("sk-other", False)):
            client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=10)
            try:
                if works:
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                else:
                    with pytest.raises(openai.AuthenticationError):
                        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            finally:
                client.close()
        assert server.stats()["outcomes"] == {"ok": 1, "unauthorized": 1}
