"""python -m cv_queue.llm_server --port N: the local OpenAI-compatible server, until SIGTERM or Ctrl-C (the same as
`cv-queue llm-server`; its flags: command.py).

Prints "llm-server listening on http://HOST:PORT/v1" once it accepts connections (with --port 0, the port chosen).
"""

import argparse
import sys

from cv_queue.llm_server.command import DESCRIPTION, add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cv_queue.llm_server", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
