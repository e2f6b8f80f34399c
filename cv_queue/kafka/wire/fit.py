"""Making every output fit its topic's max.message.bytes, so that no record can wedge a slot's transactions.

A record the broker (or librdkafka, before it) refuses would fail every retry of the transaction that carries it,
and the same record would be met again after a restart: a crash loop. So each output is sized before it is
produced:
- a retry record that does not fit loses its stack trace; if it still does not fit, the job is dead-lettered;
- a dead letter that does not fit is shrunk step by step, keeping its provenance and error headers: the stack
  trace goes, then the original record's own headers (counted in cvq.headers.dropped), then the value is cut
  (cvq.value.truncated = its original size), then the key (cvq.key.truncated).
"""

import logging
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from cv_queue import headers as h
from cv_queue.kafka.wire.records import OutputRecord, record_size

log = logging.getLogger("cv_queue.worker")

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # the broker's message.max.bytes default, for a topic that sets none
SAFETY_MARGIN = 1024  # batch framing around a lone record
LIBRDKAFKA_MIN = 1_000_000


@dataclass(frozen=True)
class OutputLimits:
    """max.message.bytes of each topic a worker writes, as the broker reports it."""

    by_topic: dict[str, int] = field(default_factory=dict)

    def limit(self, topic: str) -> int:
        return self.by_topic.get(topic, KAFKA_DEFAULT_MAX_MESSAGE_BYTES) - SAFETY_MARGIN

    @property
    def producer_max_bytes(self) -> int:
        """message.max.bytes for the producer: room for the largest record any output topic accepts."""
        largest = max(self.by_topic.values(), default=KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
        return max(LIBRDKAFKA_MIN, largest + 64 * 1024)

    def fits(self, out: OutputRecord) -> bool:
        return out.size <= self.limit(out.topic)


def read_output_limits(admin: AdminClient, topics: list[str], fallback: dict[str, int],
                       timeout_s: float = 30.0) -> OutputLimits:
    """The effective max.message.bytes of `topics`; `fallback` (from the settings) where the broker won't say."""
    limits = dict(fallback)
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        try:
            entry = future.result(timeout=timeout_s).get("max.message.bytes")
            if entry is not None and entry.value is not None:
                limits[resource.name] = int(entry.value)
        except Exception as exc:  # e.g. no DescribeConfigs ACL: the configured value is the best guess
            log.warning("could not read max.message.bytes of %s (%s); assuming %s", resource.name, exc,
                        limits.get(resource.name, KAFKA_DEFAULT_MAX_MESSAGE_BYTES))
    return OutputLimits(limits)


def _replace(headers: h.Headers, name: str, value: bytes) -> h.Headers:
    return [(k, value if k == name else v) for k, v in headers]


def trim_error_detail(out: OutputRecord) -> OutputRecord:
    """The record without its stack trace, and with a short error message."""
    headers = _replace(out.headers, h.ERROR_STACKTRACE, b"[dropped: the record had to fit max.message.bytes]")
    message = h.last(headers, h.ERROR_MESSAGE)
    if message is not None and len(message) > 300:
        headers = _replace(headers, h.ERROR_MESSAGE, message[:280] + b" [cut]")
    return OutputRecord(out.topic, out.key, out.value, headers, out.partition)


def shrink_dead_letter(out: OutputRecord, limit: int) -> OutputRecord:
    """A dead letter made to fit `limit` bytes, losing as little as possible; provenance headers always stay."""
    if out.size <= limit:
        return out
    out = trim_error_detail(out)
    if out.size <= limit:
        return out
    foreign = [(k, v) for k, v in out.headers if not k.startswith(h.PREFIX)]
    if foreign:
        own = [(k, v) for k, v in out.headers if k.startswith(h.PREFIX)]
        out = OutputRecord(out.topic, out.key, out.value, [*own, (h.HEADERS_DROPPED, h.int_value(len(foreign)))],
                           out.partition)
        if out.size <= limit:
            return out
    marker = 40  # the size of a truncation header and its number
    value = out.value or b""
    room = limit - record_size(out.key, b"", out.headers) - marker
    if room < len(value):
        out = OutputRecord(out.topic, out.key, value[:max(room, 0)],
                           [*out.headers, (h.VALUE_TRUNCATED, h.int_value(len(value)))], out.partition)
    if out.size <= limit:
        return out
    key = out.key or b""
    room = limit - record_size(b"", out.value, out.headers) - marker
    return OutputRecord(out.topic, key[:max(room, 0)], out.value,
                        [*out.headers, (h.KEY_TRUNCATED, h.int_value(len(key)))], out.partition)
