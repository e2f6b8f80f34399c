"""Fixtures: the local OpenAI-compatible server on loopback, one per test, stopped whatever happens."""

from collections.abc import Callable, Iterator

import pytest

from cv_queue.llm_server import ServerOptions, ThreadedLLMServer


@pytest.fixture
def start_llm_server() -> Iterator[Callable[..., ThreadedLLMServer]]:
    """start_llm_server(latency_ms=..., json_schema_supported=False, ...) -> a running server."""
    started: list[ThreadedLLMServer] = []

    def start(**options: object) -> ThreadedLLMServer:
        server = ThreadedLLMServer(ServerOptions(**options))  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def llm_server(start_llm_server: Callable[..., ThreadedLLMServer]) -> ThreadedLLMServer:
    return start_llm_server()
