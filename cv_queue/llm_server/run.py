"""Starting the local LLM server: in the test's own event loop, in a background thread, or as a subprocess."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cv_queue.llm_server.address import LOOPBACK, READY_PREFIX
from cv_queue.llm_server.app import ServerOptions, make_app, reset_stats_of, stats_snapshot

# 1,000 clients connecting at once must not overflow the accept queue (the default backlog is 128).
_BACKLOG = 2048


@dataclass
class LLMServer:
    """A started server. `base_url` ends in /v1, the way the openai SDK wants it."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        """Counters (GET /stats); call from the server's own loop (see ThreadedLLMServer.stats otherwise)."""
        return stats_snapshot(self.runner.app)

    def reset_stats(self) -> None:
        reset_stats_of(self.runner.app)

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_server(options: ServerOptions | None = None, host: str = LOOPBACK, port: int = 0) -> LLMServer:
    """Serve on host:port (0: a free port) in the running loop."""
    # handler_cancellation: a hung request ends when its client hangs up, as a real server's would.
    runner = web.AppRunner(make_app(options), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=_BACKLOG)
    await site.start()
    bound_port = next(address[1] for address in runner.addresses if isinstance(address, tuple))
    return LLMServer(runner, host, bound_port)


@contextlib.asynccontextmanager
async def serving(options: ServerOptions | None = None, port: int = 0) -> AsyncIterator[LLMServer]:
    server = await start_server(options, port=port)
    try:
        yield server
    finally:
        await server.close()


class ThreadedLLMServer:
    """The server on an event loop of its own thread, so that tests can drive clients with asyncio.run."""

    def __init__(self, options: ServerOptions | None = None, port: int = 0) -> None:
        self._options, self._port = options, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-server", daemon=True)
        self._server: LLMServer | None = None

    def start(self) -> "ThreadedLLMServer":
        self._thread.start()
        self._server = self._run(start_server(self._options, port=self._port))
        return self

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    @property
    def server(self) -> LLMServer:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    def stats(self) -> dict[str, Any]:
        async def snapshot() -> dict[str, Any]:
            return self.server.stats()

        return self._run(snapshot())

    def reset_stats(self) -> None:
        async def reset() -> None:
            self.server.reset_stats()

        self._run(reset())

    def stop(self) -> None:
        if not self._thread.is_alive():
            self._loop.close()
            return
        try:
            if self._server is not None:
                self._run(self._server.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    def __enter__(self) -> "ThreadedLLMServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    base_url: str

    def stats(self) -> dict[str, Any]:
        root = self.base_url.removesuffix("/v1")
        with urllib.request.urlopen(f"{root}/stats", timeout=10) as response:
            return json.load(response)


@contextlib.contextmanager
def server_process(*args: str, timeout_s: float = 30.0,
                   command: Sequence[str] = (sys.executable, "-m", "cv_queue.llm_server")) -> Iterator[ServerProcess]:
    """`python -m cv_queue.llm_server --port 0 ARGS...` (or `command`, e.g. `cv-queue llm-server`); yields once it
    announced its port; SIGTERM at the end, SIGKILL of its process group if that does not stop it."""
    process = subprocess.Popen(
        [*command, "--port", "0", *args],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ})
    try:
        base_url = _announced_url(process, timeout_s)
        yield ServerProcess(process, base_url)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout_s)
        if process.stdout is not None:
            process.stdout.close()


def _announced_url(process: subprocess.Popen[str], timeout_s: float) -> str:
    result: list[str] = []

    def read_first_line() -> None:
        assert process.stdout is not None
        result.append(process.stdout.readline())

    reader = threading.Thread(target=read_first_line, daemon=True)
    reader.start()
    reader.join(timeout_s)
    line = result[0].strip() if result else ""
    if not line.startswith(READY_PREFIX):
        if not line:  # its stdout closed: it is exiting (its own error is on stderr, which it shares with ours)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout_s)
            if process.returncode is not None:
                raise RuntimeError(f"the LLM server exited with code {process.returncode} before it announced its "
                                   "port")
        raise RuntimeError(f"the LLM server did not announce its port within {timeout_s} s (got {line!r})")
    return line.removeprefix(READY_PREFIX)
