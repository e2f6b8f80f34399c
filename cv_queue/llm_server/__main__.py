"""python -m cv_queue.llm_server --port N: the local OpenAI-compatible server, until SIGTERM or Ctrl-C.

Prints "llm-server listening on http://HOST:PORT/v1" once it accepts connections (with --port 0, the port chosen).
"""

import argparse
import asyncio
import os
import signal

from cv_queue.llm_server.app import ServerOptions
from cv_queue.llm_server.run import LOOPBACK, READY_PREFIX, start_server


def _options(argv: list[str] | None) -> tuple[argparse.Namespace, ServerOptions]:
    parser = argparse.ArgumentParser(prog="python -m cv_queue.llm_server", description=__doc__)
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
    args = parser.parse_args(argv)
    for flag, value in (("--rpm", args.rpm), ("--tpm", args.tpm)):
        if value is not None and not value > 0:
            parser.error(f"{flag} must be a positive number, not {value:g}")
    options = ServerOptions(
        latency_ms=args.latency_ms, latency_p99_ms=args.latency_p99_ms,
        json_schema_supported=not args.no_json_schema, json_object_supported=not args.no_json_object,
        api_key=os.environ[args.require_key_from_env] if args.require_key_from_env else None,
        requests_per_minute=args.rpm, tokens_per_minute=args.tpm)
    return args, options


async def _serve(args: argparse.Namespace, options: ServerOptions) -> None:
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


def main(argv: list[str] | None = None) -> None:
    args, options = _options(argv)
    asyncio.run(_serve(args, options))


if __name__ == "__main__":
    main()
