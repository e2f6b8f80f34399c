"""The local LLM server's command line, shared by `cv-queue llm-server` and `python -m cv_queue.llm_server`: its
flags, the ServerOptions they give, and serving until SIGTERM or Ctrl-C.

Light on purpose (argparse and address.py only, at import): the `cv-queue` parser defines these flags on every
start, and the server itself (aiohttp) is imported only when it runs.
"""

import argparse
import asyncio
import os
import signal
from typing import TYPE_CHECKING

from cv_queue.llm_server.address import LOOPBACK, READY_PREFIX

if TYPE_CHECKING:  # imported where the server runs: at import, it would load aiohttp with every `cv-queue` start
    from cv_queue.llm_server.app import ServerOptions


DESCRIPTION = (
    "The local OpenAI-compatible chat-completions server (tests, `make run LLM=local`, `cv-queue bench`), until "
    f"SIGTERM or Ctrl-C. Prints '{READY_PREFIX}http://HOST:PORT/v1' once it accepts connections (with --port 0, the "
    "port chosen). GET /v1/models answers once it is up; GET /stats gives its counters."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency of every request (or its mean)")
    parser.add_argument("--latency-p99-ms", type=float, default=None, help="lognormal latency with this p99")
    parser.add_argument("--no-json-schema", action="store_true", help="400 on response_format json_schema")
    parser.add_argument("--no-json-object", action="store_true", help="400 on response_format json_object")
    parser.add_argument("--require-key-from-env", metavar="VAR", default=None,
                        help="401 unless the Bearer token equals this environment variable's value")
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute per API key (429 beyond)")
    parser.add_argument("--tpm", type=float, default=None,
                        help="tokens per minute per API key (prompt + max_tokens, charged on arrival; 429 beyond)")


def server_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> "ServerOptions":
    """The options the flags ask for; a flag out of range is the parser's error (usage, exit code 2)."""
    from cv_queue.llm_server.app import ServerOptions

    for flag, value in (("--rpm", args.rpm), ("--tpm", args.tpm)):
        if value is not None and not value > 0:
            parser.error(f"{flag} must be a positive number, not {value:g}")
    return ServerOptions(
        latency_ms=args.latency_ms, latency_p99_ms=args.latency_p99_ms,
        json_schema_supported=not args.no_json_schema, json_object_supported=not args.no_json_object,
        api_key=os.environ[args.require_key_from_env] if args.require_key_from_env else None,
        requests_per_minute=args.rpm, tokens_per_minute=args.tpm)


async def _serve(args: argparse.Namespace, options: "ServerOptions") -> None:
    from cv_queue.llm_server.run import start_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await start_server(options, host=args.host, port=args.port)
    try:
        print(f"{READY_PREFIX}{server.base_url}", flush=True)
        await stop.wait()
    finally:
        await server.close()


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve until SIGTERM or SIGINT; 0 once closed."""
    asyncio.run(_serve(args, server_options(args, parser)))
    return 0
