"""Provider failures through the real openai SDK, mapped by exception type to the queue's categories."""

import socket
import traceback
from collections.abc import Callable

import pytest

from cv_queue.errors import ErrorCategory, PermanentJobError, RateLimitedError, TransientJobError
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.llm_server import ThreadedLLMServer
from cv_queue_tests.llm.helpers import API_KEY, evaluate, evaluator_for, make_job

StartServer = Callable[..., ThreadedLLMServer]
classify = ErrorClassifier().classify


def test_429_with_retry_after(llm_server: ThreadedLLMServer) -> None:
    with pytest.raises(RateLimitedError) as caught:
        evaluate(evaluator_for(llm_server), make_job(cv_text="CV [[llm:429:retry-after=2]]"))
    assert caught.value.retry_after_s is not None
    assert caught.value.retry_after_s >= 2.0
    assert classify(caught.value) == ErrorCategory.RATE_LIMITED
    assert llm_server.stats()["requests"] == 1  # the SDK did not retry on its own


def test_429_waits_for_retry_after_not_for_the_window_reset(llm_server: ThreadedLLMServer) -> None:
    headers = "retry-after=1:x-ratelimit-reset-requests=250ms:x-ratelimit-reset-tokens=6m0s"
    job = make_job(cv_text=f"CV [[llm:429:{headers}]]")
    with pytest.raises(RateLimitedError) as caught:
        evaluate(evaluator_for(llm_server), job)
    assert caught.value.retry_after_s == 1.0


def test_429_with_an_http_date(llm_server: ThreadedLLMServer) -> None:
    with pytest.raises(RateLimitedError) as caught:
        evaluate(evaluator_for(llm_server), make_job(cv_text="CV [[llm:429:retry-after-date=30]]"))
    # An HTTP date has whole seconds, and some time passed since the server wrote it.
    assert caught.value.retry_after_s is not None
    assert 20.0 <= caught.value.retry_after_s <= 31.0


def test_429_without_headers_leaves_the_wait_to_the_queue(llm_server: ThreadedLLMServer) -> None:
    with pytest.raises(RateLimitedError) as caught:
        evaluate(evaluator_for(llm_server), make_job(cv_text="CV [[llm:429]]"))
    assert caught.value.retry_after_s is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_transient(llm_server: ThreadedLLMServer, status: int) -> None:
    with pytest.raises(TransientJobError, match=str(status)):
        evaluate(evaluator_for(llm_server), make_job(cv_text=f"CV [[llm:{status}]]"))
    assert llm_server.stats()["requests"] == 1


def test_a_timeout_is_transient(llm_server: ThreadedLLMServer) -> None:
    evaluator = evaluator_for(llm_server, request_timeout_s=0.5)
    with pytest.raises(TransientJobError, match=r"timed out after 0.5 s"):
        evaluate(evaluator, make_job(cv_text="CV [[llm:hang]]"))
    assert llm_server.stats()["requests"] == 1


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    # Nothing listens there now: the connection is refused.
    with pytest.raises(TransientJobError, match="cannot reach the LLM"):
        evaluate(evaluator_for(f"http://127.0.0.1:{closed_port}/v1"), make_job())


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_permanent(llm_server: ThreadedLLMServer, status: int) -> None:
    with pytest.raises(PermanentJobError, match=str(status)) as caught:
        evaluate(evaluator_for(llm_server, structured_output="json_schema"), make_job(cv_text=f"CV [[llm:{status}]]"))
    assert classify(caught.value) == ErrorCategory.PERMANENT
    assert llm_server.stats()["requests"] == 1


def test_404_names_the_model_and_url_settings(llm_server: ThreadedLLMServer) -> None:
    with pytest.raises(PermanentJobError) as caught:
        evaluate(evaluator_for(llm_server), make_job(cv_text="CV [[llm:404]]"))
    assert "CVQ_LLM__MODEL" in str(caught.value)
    assert f"CVQ_LLM__BASE_URL ('{llm_server.base_url}')" in str(caught.value)


def _everything_said_about(error: BaseException) -> str:
    """The message and the whole chained traceback, as a dead letter would store them."""
    return str(error) + "".join(traceback.format_exception(error))


def test_401_names_the_key_setting_and_never_the_key(start_llm_server: StartServer) -> None:
    server = start_llm_server(api_key=API_KEY)
    wrong_key = "sk-wrong-7d3a91c4e2b8"
    with pytest.raises(PermanentJobError) as caught:
        evaluate(evaluator_for(server, api_key=wrong_key), make_job())
    assert server.stats()["outcomes"] == {"unauthorized": 1}  # the server did echo the key back
    said = _everything_said_about(caught.value)
    assert "401" in said
    assert "CVQ_LLM__API_KEY (or OPENAI_API_KEY)" in said
    assert wrong_key not in said
    assert "7d3a91c4e2b8" not in said
    assert API_KEY not in said


def test_the_right_key_is_accepted(start_llm_server: StartServer) -> None:
    server = start_llm_server(api_key=API_KEY)
    evaluate(evaluator_for(server), make_job())
    assert server.stats()["outcomes"] == {"ok": 1}


def test_403_names_the_key_and_the_model(llm_server: ThreadedLLMServer) -> None:
    with pytest.raises(PermanentJobError) as caught:
        evaluate(evaluator_for(llm_server), make_job(cv_text="CV [[llm:403]]"))
    said = _everything_said_about(caught.value)
    assert "403" in said
    assert "permissions" in said
    assert "CVQ_LLM__MODEL" in said
    assert API_KEY not in said
