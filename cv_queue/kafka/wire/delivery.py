"""A consumed record and its `cvq.` bookkeeping, parsed once at intake into a typed view.

Routing, retry scheduling and dead-lettering read this view instead of visiting the raw headers again. Parsing is
strict for a record about to be processed (garbage bookkeeping is an invalid payload: a record is never retried on
guesswork) and lenient for a record about to be dead-lettered (garbage counts as absent, so the letter is still
well-formed).
"""

from dataclasses import dataclass

from cv_queue import headers as h
from cv_queue.errors import InvalidPayloadError
from cv_queue.kafka.wire.records import SourceRecord
from cv_queue.lanes import Lane

_INT_HEADERS = (h.ATTEMPTS, h.HANDLER_CALLS, h.REPLAYS, h.RETRY_DUE_AT, h.FIRST_FAILED_AT, h.THROTTLES,
                h.THROTTLED_SINCE)


@dataclass(slots=True, frozen=True)
class Provenance:
    """Where a job was first consumed; carried unchanged across retry hops."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    def headers(self) -> h.Headers:
        return [
            (h.ORIGINAL_TOPIC, h.str_value(self.topic)),
            (h.ORIGINAL_PARTITION, h.int_value(self.partition)),
            (h.ORIGINAL_OFFSET, h.int_value(self.offset)),
            (h.ORIGINAL_TIMESTAMP, h.int_value(self.timestamp_ms)),
        ]


@dataclass(slots=True, frozen=True)
class Delivery:
    """One delivery of a job: the record plus what its headers say about earlier deliveries."""

    source: SourceRecord
    attempts: int  # failed deliveries counted toward max_attempts so far (0 on the main topic)
    handler_calls: int  # handler invocations so far, across deliveries
    replays: int  # times the job came back from the DLQ
    due_at_ms: int  # 0 = run now
    first_failed_at_ms: int  # 0 = never failed
    provenance: Provenance
    foreign_headers: h.Headers  # what the producer of the original record sent, byte-exact
    interactive: bool = False  # the interactive lane's job (its topic, or cvq.lane on the retry topic)
    throttles: int = 0  # deliveries a rate limiter refused so far (not counted in attempts)
    throttled_since_ms: int = 0  # when the first of them was refused; 0 = never


def _own_values(headers: h.Headers) -> dict[str, bytes | None]:
    """The last value of every `cvq.` header (Kafka allows repeats; the newest wins)."""
    own: dict[str, bytes | None] = {}
    for name, value in headers:
        if name.startswith(h.PREFIX):
            own[name] = value
    return own


MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: later ones cannot be dates at all
_TIMESTAMP_HEADERS = frozenset({h.RETRY_DUE_AT, h.FIRST_FAILED_AT, h.ORIGINAL_TIMESTAMP, h.THROTTLED_SINCE})


def _int(own: dict[str, bytes | None], name: str, strict: bool) -> int:
    raw = own.get(name)
    if raw is None:
        return 0
    try:
        text = raw.decode("ascii")
        value = int(text)
        if value < 0 or text.strip() != text or (name in _TIMESTAMP_HEADERS and value > MAX_TIMESTAMP_MS):
            raise ValueError(text)
    except (UnicodeDecodeError, ValueError) as exc:
        if strict:
            raise InvalidPayloadError("garbage_header", f"{name}={raw[:40]!r} is not a non-negative integer") from exc
        return 0
    return value


def _carried_provenance(own: dict[str, bytes | None]) -> Provenance | None:
    """An earlier hop's provenance, if complete and well-formed; otherwise None (this record is the origin)."""
    raw_topic = own.get(h.ORIGINAL_TOPIC)
    if raw_topic is None:
        return None
    try:
        topic = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        return None
    numbers = []
    for name in (h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET, h.ORIGINAL_TIMESTAMP):
        if own.get(name) is None:
            return None
        numbers.append(_int(own, name, strict=False) if _valid_int(own, name) else -1)
    if min(numbers) < 0:
        return None
    return Provenance(topic, *numbers)


def _valid_int(own: dict[str, bytes | None], name: str) -> bool:
    try:
        _int(own, name, strict=True)
    except InvalidPayloadError:
        return False
    return True


def parse_delivery(source: SourceRecord, from_retry: bool, *, strict: bool = True) -> Delivery:
    """The typed view of a consumed record.

    Attempts, handler calls and the due time count only on the retry topic: a job on the main topic is a first
    delivery (a replay from the DLQ starts its attempts again). With `strict`, a malformed `cvq.` header raises
    InvalidPayloadError; without, it counts as absent.
    """
    own = _own_values(source.headers)
    if not own:  # the common case, a first delivery with no bookkeeping: nothing to parse
        return Delivery(source=source, attempts=0, handler_calls=0, replays=0, due_at_ms=0, first_failed_at_ms=0,
                        provenance=Provenance(source.topic, source.partition, source.offset,
                                              max(source.timestamp_ms, 0)),
                        foreign_headers=list(source.headers))
    if strict:
        for name, value in own.items():
            if value is not None:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidPayloadError("garbage_header", f"{name} is not UTF-8") from exc
        for name in _INT_HEADERS:
            _int(own, name, strict=True)
    provenance = _carried_provenance(own) or Provenance(
        source.topic, source.partition, source.offset, max(source.timestamp_ms, 0))  # -1: the record has none
    return Delivery(
        source=source,
        attempts=_int(own, h.ATTEMPTS, strict) if from_retry else 0,
        handler_calls=_int(own, h.HANDLER_CALLS, strict) if from_retry else 0,
        replays=_int(own, h.REPLAYS, strict),
        due_at_ms=_int(own, h.RETRY_DUE_AT, strict) if from_retry else 0,
        first_failed_at_ms=_int(own, h.FIRST_FAILED_AT, strict),
        provenance=provenance,
        foreign_headers=h.foreign(source.headers),
        interactive=from_retry and own.get(h.LANE) == Lane.INTERACTIVE.value.encode(),
        throttles=_int(own, h.THROTTLES, strict) if from_retry else 0,
        throttled_since_ms=_int(own, h.THROTTLED_SINCE, strict) if from_retry else 0,
    )
