"""librdkafka's error callbacks and log lines, logged once per state change instead of once per reconnect.

During a broker outage every client reports every failed reconnect, through `error_cb` and through its log lines:
dozens of identical lines a second per worker. Here the first report of a kind is logged at once; repeats are
counted and summarised at most every `summary_interval_s` ("broker unreachable for 30 s, 412 client errors
suppressed"), and the end of the trouble is logged once ("kafka client errors stopped after 71 s"). Fatal errors
are always logged.

Nothing secret is logged: librdkafka already prints `sasl.password = [redacted]` in its `debug=conf` dump, and every
line is redacted again here (any `*password*`, `*secret*` or private-key property, and every secret value a client
was built with), so a librdkafka that forgets, or a broker error that echoes a credential, cannot leak one.
"""

import logging
import re
import threading
import time
from collections import Counter

from confluent_kafka import KafkaError

QUIET_S = 5.0  # no report for this long: the trouble is over
REDACTED = "[redacted]"
# librdkafka's config dump spells properties `name = value`; a dict's repr `'name': 'value'`. Sensitive ones are
# passwords, secrets, PEM keys and JAAS configs.
_SENSITIVE_PROPERTY = re.compile(
    r"(?P<name>[\w.]*(?:password|secret|key\.pem|private\.key|jaas\.config)[\w.]*)(?P<sep>['\"]?\s*[=:]\s*)"
    r"(?:'[^']*'|\"[^\"]*\"|\S+)", re.IGNORECASE)


def redact(text: str, secrets: frozenset[str] = frozenset()) -> str:
    """`text` without the values of sensitive properties and without any of `secrets`."""
    text = _SENSITIVE_PROPERTY.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


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
        self._secrets: frozenset[str] = frozenset()

    def add_secret(self, value: str) -> None:
        """A credential some client of this process uses: redacted from every line logged from now on."""
        if value and value not in self._secrets:
            with self._lock:
                self._secrets = self._secrets | {value}

    # librdkafka's `logger` interface: clients call logger.log(level, fmt, *args)
    def log(self, level: int, msg: str, *args: object) -> None:
        text = redact(msg % args if args else msg, self._secrets)
        if level < logging.WARNING:
            self._log.log(level, "%s", text)
            return
        # "FAIL [rdkafka#consumer-1] [thrd:...]: 127.0.0.1:9092/1: Connect to ipv4#... failed": the facility and
        # the broker name say what kind of report it is; the rest varies per attempt.
        kind = " ".join(text.split(" ", 3)[:1])
        self._report(f"log:{kind}", level, text)

    def error_cb(self, err: KafkaError) -> None:
        text = redact(str(err), self._secrets)
        if err.fatal():
            self._log.error("kafka client fatal error: %s", text)
            return
        self._report(f"error:{err.code()}", logging.WARNING, f"kafka client error: {text}")

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
