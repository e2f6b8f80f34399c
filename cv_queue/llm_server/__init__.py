"""A local OpenAI-compatible chat-completions server (tests, `make run LLM=local`, `cv-queue bench`): the paid
API cannot be reached from here.

In a test:      with ThreadedLLMServer(ServerOptions(latency_ms=200)) as llm: ... llm.base_url, llm.stats()
In a loop:      async with serving(options) as server: ... server.base_url
As a process:   cv-queue llm-server --port 0, or python -m cv_queue.llm_server --port 0
                (prints "llm-server listening on http://...:N/v1"; the flags: command.py)

The names below are loaded on first use, so that `cv-queue`, whose parser defines the llm-server flags
(command.py) on every start, does not import the server (aiohttp) unless it runs it.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cv_queue.llm_server.app import ServerOptions, make_app
    from cv_queue.llm_server.run import (
        LLMServer,
        ServerProcess,
        ThreadedLLMServer,
        server_process,
        serving,
        start_server,
    )

_WHERE = {
    "ServerOptions": "app",
    "make_app": "app",
    "LLMServer": "run",
    "ServerProcess": "run",
    "ThreadedLLMServer": "run",
    "server_process": "run",
    "serving": "run",
    "start_server": "run",
}

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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"cv_queue.llm_server.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
