"""librdkafka's error callbacks and log lines, logged once per state change instead of once per reconnect.

During a broker outage every client reports every failed reconnect, through `error_cb` and through its log lines:
dozens of identical lines a second per worker. Here the first report of a kind is logged at once; repeats are
counted and summarised at most every `summary_interval_s` ("broker unreachable for 30 s, 412 client errors
suppressed"), and the end of the trouble is logged once ("kafka client errors stopped after 71 s"). Fatal errors
are always logged.
"""

import logging
import threading
import time
from collections import Counter

from confluent_kafka import KafkaError

QUIET_S = 5.0  # no report for this long: the trouble is over


class ClientLog:
    """A `logger` object and an `error_cb` for librdkafka clients that rate-limits repeated reports."""

    def __init__(self, logger: logging.Logger, summary_interval_s: float = 30.0) -> None:
        self._log = logger
        self.summary_interval_s = summary_interval_s
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current run of trouble began
        self._last_report = 0.0
        self._last_summary = 0.0
        self._seen: set[str] = set()  # kinds already logged in this run of trouble
        self._suppressed: Counter[str] = Counter()

    # librdkafka's `logger` interface: clients call logger.log(level, fmt, *args)
    def log(self, level: int, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        if level < logging.WARNING:
            self._log.log(level, "%s", text)
            return
        # "FAIL [rdkafka#consumer-1] [thrd:...]: 127.0.0.1:9092/1: Connect to ipv4#... failed": the facility and
        # the broker name say what kind of report it is; the rest varies per attempt.
        kind = " ".join(text.split(" ", 3)[:1])
        self._report(f"log:{kind}", level, text)

    def error_cb(self, err: KafkaError) -> None:
        if err.fatal():
            self._log.error("kafka client fatal error: %s", err)
            return
        self._report(f"error:{err.code()}", logging.WARNING, f"kafka client error: {err}")

    def _report(self, kind: str, level: int, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._roll(now)
            if self._since is None:
                self._since = self._last_summary = now
            self._last_report = now
            if kind not in self._seen:
                self._seen.add(kind)
                self._log.log(level, "%s", text)
                return
            self._suppressed[kind] += 1
            if now - self._last_summary >= self.summary_interval_s:
                self._summarise(now)

    def _summarise(self, now: float) -> None:
        assert self._since is not None
        total = sum(self._suppressed.values())
        self._log.warning("kafka client trouble for %.0f s (broker unreachable?): %d repeated report(s) suppressed",
                          now - self._since, total)
        self._suppressed.clear()
        self._last_summary = now

    def _roll(self, now: float) -> None:
        """Close a run of trouble that has been quiet for QUIET_S."""
        if self._since is not None and now - self._last_report >= QUIET_S:
            self._log.info("kafka client errors stopped after %.0f s (%d repeated report(s) suppressed)",
                           self._last_report - self._since, sum(self._suppressed.values()))
            self._since = None
            self._seen.clear()
            self._suppressed.clear()

    def tick(self) -> None:
        """Called from a client's loop now and then, so a summary or the all-clear is logged without new reports."""
        now = time.monotonic()
        with self._lock:
            self._roll(now)
            if self._since is not None and self._suppressed and now - self._last_summary >= self.summary_interval_s:
                self._summarise(now)


#: One per process: a worker's consumer, producer and admin clients report the same outage.
CLIENT_LOG = ClientLog(logging.getLogger("cv_queue.kafka"))
