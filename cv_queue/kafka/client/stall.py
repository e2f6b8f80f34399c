"""A watchdog for librdkafka calls that ignore their own timeout.

librdkafka 2.16 can block in `send_offsets_to_transaction` far past the timeout it was given: when the node
holding the group coordinator dies and leaves the cluster's metadata, the client keeps waiting for that cached,
decommissioned coordinator instead of looking up the new one (confluentinc/librdkafka#5511, #5456, both open).
The call returns only when some broker connection changes state, possibly when the dead node comes back: the slot
stalls for the whole outage.

A blocked C call cannot be interrupted from Python, and a producer that is inside one cannot be trusted to go on.
So the transactional calls run under `watch()`: if one outlasts its limit, the process logs what was stuck and
every thread's stack, and exits at once with code EXIT_CLIENT_STALLED. That is safe for exactly-once: the broker
settles the open transaction when the restarted worker's init_transactions() fences this one (committed if the
commit had reached the coordinator, else aborted; outputs and offsets alike), and the restarted process looks its
coordinators up afresh and resumes from the committed offsets. Its supervisor
(the Dagster fleet sensor, or systemd/Kubernetes for `cv-queue worker`) restarts it.
"""

import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("cv_queue.worker")

#: `cv-queue worker` exit code when a client call stayed blocked past its limit.
EXIT_CLIENT_STALLED = 8
#: How long the report of a stall (log line, thread stacks) may take before the process exits regardless.
REPORT_GRACE_S = 5.0


def _exit_stalled(what: str, elapsed_s: float) -> None:
    """Say what was stuck and exit. The exit must happen whatever the reporting does (a logging handler that
    raises or waits on a lock held by the stuck thread), so the report is best effort and the exit is in finally."""
    # A backstop for a report that blocks (a logging handler waiting on a lock, a log shipped to a database).
    backstop = threading.Timer(REPORT_GRACE_S, os._exit, args=(EXIT_CLIENT_STALLED,))
    backstop.daemon = True
    backstop.start()
    try:
        os.write(2, f"cv-queue: {what} blocked for {elapsed_s:.0f}s; exiting with code {EXIT_CLIENT_STALLED}\n"
                    .encode())
        log.critical("%s has been blocked for %.0fs, past its own timeout (a librdkafka client stall, e.g. a cached "
                     "coordinator on a node that left the cluster): exiting with code %d. What the broker holds of "
                     "the open transaction is settled by the restarted worker's init_transactions (committed if "
                     "the commit had reached the coordinator, else aborted); it resumes from the committed offsets",
                     what, elapsed_s, EXIT_CLIENT_STALLED)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except BaseException:
        pass
    finally:
        os._exit(EXIT_CLIENT_STALLED)


class StallWatchdog:
    """One thread that ends the process when a watched call outlasts its limit."""

    def __init__(self, on_stall: Callable[[str, float], None] = _exit_stalled, tick_s: float = 0.5) -> None:
        self._on_stall = on_stall
        self._tick_s = tick_s
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[str, float, float]] = {}  # token -> (what, started, limit_s)
        self._next_token = 0
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, what: str, limit_s: float) -> Iterator[None]:
        """Run the block under the watchdog: past `limit_s` seconds, `on_stall(what, elapsed)` is called."""
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._watched[token] = (what, time.monotonic(), limit_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cvq-stall-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(token, None)

    def _run(self) -> None:
        while True:  # never ends: an exception in on_stall is the callback's (the default one exits in finally)
            time.sleep(self._tick_s)
            now = time.monotonic()
            with self._lock:
                overdue = [(token, what, now - started) for token, (what, started, limit_s) in self._watched.items()
                           if now - started > limit_s]
                for token, _, _ in overdue:
                    del self._watched[token]  # reported once
            for _, what, elapsed in overdue:
                self._on_stall(what, elapsed)


#: The process's watchdog (its thread starts on first use).
WATCHDOG = StallWatchdog()
