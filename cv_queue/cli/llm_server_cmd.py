"""`cv-queue llm-server`: the local OpenAI-compatible LLM server (cv_queue/llm_server), with the flags of
`python -m cv_queue.llm_server` (both take them from cv_queue/llm_server/command.py), until SIGTERM or Ctrl-C."""

import argparse
import functools

from cv_queue.llm_server.command import DESCRIPTION, add_arguments, run


def add_parser(sub: argparse._SubParsersAction) -> None:
    llm = sub.add_parser("llm-server", help="run the local OpenAI-compatible LLM server until SIGTERM or Ctrl-C",
                         description=DESCRIPTION)
    add_arguments(llm)
    llm.set_defaults(func=functools.partial(cmd_llm_server, parser=llm))


def cmd_llm_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return run(args, parser)
