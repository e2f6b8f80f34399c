"""A local OpenAI-compatible chat-completions server (tests, `make run LLM=local`, `cv-queue bench`): the paid
API cannot be reached from here.

In a test:      with ThreadedLLMServer(ServerOptions(latency_ms=200)) as llm: ... llm.base_url, llm.stats()
In a loop:      async with serving(options) as server: ... server.base_url
As a process:   python -m cv_queue.llm_server --port 0   (prints "llm-server listening on http://...:N/v1")
"""

from cv_queue.llm_server.app import ServerOptions, make_app
from cv_queue.llm_server.run import (
    LLMServer,
    ServerProcess,
    ThreadedLLMServer,
    server_process,
    serving,
    start_server,
)

__all__ = [
    "LLMServer",
    "ServerOptions",
    "ServerProcess",
    "ThreadedLLMServer",
    "make_app",
    "server_process",
    "serving",
    "start_server",
]
