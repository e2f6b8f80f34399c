"""Stop signals that every command installs itself, whatever it inherited.

A process started as a background job of a non-interactive shell (`make run &` in a script), and under some
supervisors and CI runners, starts with SIGINT ignored. Python then installs no KeyboardInterrupt handler, and
an ignored signal stays ignored across exec into every child. So a command that relied on the defaults could
not be stopped with Ctrl-C, nor stop its children with SIGINT.

Installing a handler of our own fixes both: the command handles SIGINT, SIGTERM and SIGHUP, and since a caught
signal (unlike an ignored one) is reset to its default on exec, every child we start gets the default
disposition back and can be stopped the usual way.
"""

import signal
from collections.abc import Callable

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, so every `finally` and `except KeyboardInterrupt` that cleans up
    after Ctrl-C does the same for SIGTERM and SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal


def _raise_stop(signum: int, _frame: object) -> None:
    raise StopRequested(signum)


def raise_on_stop_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise StopRequested in the main thread, even if they were ignored before."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)


def call_on_stop_signals(callback: Callable[[int], None]) -> None:
    """SIGINT, SIGTERM and SIGHUP call `callback(signum)` instead: for commands that stop gracefully on a flag."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: callback(signum))


def ignore_stop_signals() -> None:
    """While a bounded stop runs: a second Ctrl-C must not cut it short. Set only after the last child started,
    since children would inherit an ignored signal."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
