"""The settled-offset map: which offsets above a partition's committed offset are already done, as commit metadata.

A worker commits, per source partition, the lowest offset it has not finished (C). Jobs above C finish out of
order; their outputs are produced at once, so the offsets they came from must be committed as done in the same
transaction, or a restart would run them again and produce their outputs twice. Kafka's offset commit carries a
metadata string per partition (TxnOffsetCommit inside a transaction), which is where this map goes.

What is encoded: the offsets in (C, H], where H is the highest done offset, as bits: 1 = done, 0 = must run again.
Offsets of the range that hold no record (transaction markers) are never fetched, so they count as done. The
text is versioned, ASCII and free of NUL (the Python client takes a `str`, and librdkafka sends it NUL-terminated):

    cvq1:<C>:<H - C>:R:<payload>    run lengths, alternating done / not done, starting with done (maybe 0 long)
    cvq1:<C>:<H - C>:B:<payload>    a bitset, one bit per offset from C + 1, least significant bit first

The payload is unpadded base64url of unsigned LEB128 varints (R) or of the bitset's bytes (B). Both lengths are
computed from the not-done offsets alone, in one pass, and only the shorter encoding is built. C is repeated in
the text so that a map can be checked against the offset it was committed with.

Why not Parallel Consumer's format: its magic bytes are binary inside base64 and its base is implicit; ours reads in
a log line, names its own base, and is decoded strictly (every malformed or foreign text is refused with the
reason, never half-read), which the fuzz tests hold it to.
"""

import base64
import binascii
import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

MAGIC = "cvq"
VERSION = "1"
PREFIX = f"{MAGIC}{VERSION}:"
#: Kafka's default offset.metadata.max.bytes; Redpanda may not enforce any limit, so the guard never relies on one.
KAFKA_DEFAULT_METADATA_MAX_BYTES = 4096
#: Room kept for the header whatever the offsets' digits: `cvq1:` + two 19-digit numbers + `:R:` and separators.
#: Sizing every payload against this (not the header it happens to have) makes "the map still fits" monotonic:
#: moving C up never makes a map that fitted stop fitting.
HEADER_RESERVE = len(PREFIX) + 19 + 1 + 19 + 3
#: librdkafka sends the metadata NUL-terminated; the broker counts that byte against its limit.
NUL_BYTES = 1
#: A decoded map listing more not-done offsets than this is refused as corrupt (a worker never holds this many).
MAX_INCOMPLETE = 1_000_000
MAX_OFFSET = 2**63 - 1
_NUMBER = re.compile(r"0|[1-9][0-9]{0,18}")
_PAYLOAD = re.compile(r"[A-Za-z0-9_-]*")


class OffsetMapError(ValueError):
    """Commit metadata that cannot be used as a settled-offset map."""


class ForeignOffsetMetadata(OffsetMapError):
    """Metadata that cv-queue did not write (a group committed by another tool)."""


class CorruptOffsetMap(OffsetMapError):
    """Metadata that claims to be ours but does not decode."""


@dataclass(frozen=True, slots=True)
class SettledAbove:
    """The done offsets above a committed offset: every offset in (base, high] except `incomplete` (sorted)."""

    base: int
    high: int
    incomplete: tuple[int, ...] = ()

    def is_done(self, offset: int) -> bool:
        if not self.base < offset <= self.high:
            return False
        index = bisect.bisect_left(self.incomplete, offset)
        return index == len(self.incomplete) or self.incomplete[index] != offset

    @property
    def empty(self) -> bool:
        return self.high <= self.base


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _b64_len(raw_bytes: int) -> int:
    return (4 * raw_bytes + 2) // 3  # unpadded


def _runs(base: int, high: int, incomplete: Sequence[int]) -> list[int]:
    """Alternating run lengths over (base, high]: done, not done, done, ... ending with a done run."""
    runs: list[int] = []
    position = base + 1  # the next offset not yet covered by a run
    index = 0
    while index < len(incomplete):
        start = incomplete[index]
        end = start
        while index + 1 < len(incomplete) and incomplete[index + 1] == end + 1:
            index += 1
            end += 1
        runs.append(start - position)
        runs.append(end - start + 1)
        position = end + 1
        index += 1
    runs.append(high - position + 1)
    return runs


def _check_range(base: int, high: int, incomplete: Sequence[int]) -> None:
    if base < 0 or high <= base:
        raise ValueError(f"an offset map needs 0 <= base < high (base {base}, high {high})")
    if incomplete and not (base < incomplete[0] and incomplete[-1] < high):
        raise ValueError(f"not-done offsets must lie strictly between {base} and {high}")


def encoded_length(base: int, high: int, incomplete: Sequence[int]) -> int:
    """The length of `encode(...)`'s text, computed without building it (one pass over `incomplete`)."""
    if high <= base:
        return 0
    _check_range(base, high, incomplete)
    rle = _b64_len(sum(_varint_len(r) for r in _runs(base, high, incomplete)))
    bits = _b64_len((high - base + 7) // 8)
    return len(f"{PREFIX}{base}:{high - base}:R:") + min(rle, bits)


def payload_fits(base: int, high: int, incomplete: Sequence[int], limit_bytes: int) -> bool:
    """Whether a map fits a broker limit of `limit_bytes`, sized with the full header reserve (see HEADER_RESERVE)."""
    if high <= base:
        return True
    _check_range(base, high, incomplete)
    rle = _b64_len(sum(_varint_len(r) for r in _runs(base, high, incomplete)))
    bits = _b64_len((high - base + 7) // 8)
    return HEADER_RESERVE + min(rle, bits) + NUL_BYTES <= limit_bytes


def encode(base: int, high: int, incomplete: Sequence[int]) -> str:
    """The map of (base, high] with `incomplete` (sorted, strictly inside) not done; "" when the range is empty."""
    if high <= base:
        return ""
    _check_range(base, high, incomplete)
    runs = _runs(base, high, incomplete)
    span = high - base
    rle_len = sum(_varint_len(r) for r in runs)
    if rle_len <= (span + 7) // 8:
        raw = bytearray()
        for run in runs:
            raw += _varint(run)
        kind = "R"
    else:
        raw = bytearray(b"\xff" * ((span + 7) // 8))
        if span % 8:  # bits past the range stay 0, so the decoder can insist on it
            raw[-1] = (1 << (span % 8)) - 1
        for offset in incomplete:
            bit = offset - base - 1
            raw[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF
        kind = "B"
    payload = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode("ascii")
    return f"{PREFIX}{base}:{span}:{kind}:{payload}"


def _number(text: str, what: str, metadata: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: {what} {text[:30]!r} is not a plain number")
    return int(text)


def _decode_payload(payload: str, metadata: str) -> bytes:
    if not _PAYLOAD.fullmatch(payload) or len(payload) % 4 == 1:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: the payload is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: {exc}") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != payload:  # non-canonical trailing bits
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: the payload is not canonical base64url")
    return raw


def _decode_runs(raw: bytes, base: int, span: int, metadata: str) -> tuple[int, ...]:
    runs: list[int] = []
    value = shift = 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte & 0x80:
            if shift > 63:
                raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: a run length overflows")
            continue
        if shift > 7 and value >> (shift - 7) == 0:
            raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: a run length is not minimally encoded")
        runs.append(value)
        value = shift = 0
    if shift:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: the last run length is cut off")
    if len(runs) % 2 == 0 or runs[-1] == 0 or any(r == 0 for r in runs[1:]):
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: run lengths must alternate done / not done and end "
                               "with a done run (only the first may be empty)")
    if sum(runs) != span:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: the runs cover {sum(runs)} offsets, not {span}")
    if sum(runs[1::2]) > MAX_INCOMPLETE:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: more than {MAX_INCOMPLETE} offsets not done")
    incomplete: list[int] = []
    position = base + 1
    for index, run in enumerate(runs):
        if index % 2:
            incomplete.extend(range(position, position + run))
        position += run
    return tuple(incomplete)


def _decode_bits(raw: bytes, base: int, span: int, metadata: str) -> tuple[int, ...]:
    if len(raw) != (span + 7) // 8:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: {len(raw)} bitset bytes for {span} offsets")
    if span % 8 and raw[-1] >> (span % 8):
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: bits set past the end of the range")
    if not raw[-1] >> ((span - 1) % 8) & 1:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: the highest offset of the range is not done")
    incomplete = [base + 1 + i * 8 + bit for i, byte in enumerate(raw) if byte != 0xFF
                  for bit in range(8) if not byte >> bit & 1 and i * 8 + bit < span]
    if len(incomplete) > MAX_INCOMPLETE:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: more than {MAX_INCOMPLETE} offsets not done")
    return tuple(incomplete)


def decode(metadata: str | None, committed: int) -> SettledAbove | None:
    """The map committed with offset `committed`; None when there is none (no metadata, or an empty string).

    Raises ForeignOffsetMetadata for text cv-queue did not write, and CorruptOffsetMap for text that claims to be
    ours but is malformed, of an unknown version, or was written for another offset."""
    if not metadata:
        return None
    if not metadata.startswith(MAGIC):
        raise ForeignOffsetMetadata(f"commit metadata {metadata[:80]!r} was not written by cv-queue")
    if not metadata.startswith(PREFIX):
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r} has an unknown version (this cv-queue reads "
                               f"{PREFIX!r}): written by a newer cv-queue, or not by cv-queue")
    fields = metadata[len(PREFIX):].split(":")
    if len(fields) != 4:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: expected base:span:kind:payload")
    base = _number(fields[0], "the base", metadata)
    span = _number(fields[1], "the span", metadata)
    kind, payload = fields[2], fields[3]
    if base != committed:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r} was written for offset {base}, but it is committed "
                               f"with offset {committed}")
    if span < 1:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: an empty range is written as no metadata")
    if base + span > MAX_OFFSET:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: the range ends past the largest Kafka offset")
    raw = _decode_payload(payload, metadata)
    if kind == "R":
        incomplete = _decode_runs(raw, base, span, metadata)
    elif kind == "B":
        incomplete = _decode_bits(raw, base, span, metadata)
    else:
        raise CorruptOffsetMap(f"offset map {metadata[:80]!r}: unknown encoding {kind[:10]!r} (R or B)")
    return SettledAbove(base=base, high=base + span, incomplete=incomplete)
