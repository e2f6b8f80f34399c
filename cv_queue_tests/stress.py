"""Conditions that stop paths must survive: a busy machine, and signal dispositions inherited from the parent."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Ignores SIGINT and SIGQUIT, then execs the command: the dispositions a background job of a non-interactive shell
# starts with. An ignored signal stays ignored across exec, and Python then installs no KeyboardInterrupt handler.
_EXEC_WITH_SIGINT_IGNORED = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                             "signal.signal(signal.SIGQUIT, signal.SIG_IGN); os.execvp(sys.argv[1], sys.argv[1:])")


def with_sigint_ignored(command: list[str]) -> list[str]:
    """`command`, started as `make run &` in a script would start it. Same pid: the wrapper execs it."""
    return [sys.executable, "-c", _EXEC_WITH_SIGINT_IGNORED, *command]


@contextmanager
def cpu_hog() -> Iterator[list[subprocess.Popen]]:
    """A busy loop in a separate process for each core, at normal priority, for as long as the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(os.cpu_count() or 2)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(30)
