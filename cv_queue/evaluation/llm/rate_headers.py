"""What a provider's rate-limit headers say: how long to wait after a 429, and how full its windows are.

- `retry-after-ms` (OpenAI, Azure) or `retry-after` (seconds or an HTTP date, RFC 9110) is the wait before the next
  call may succeed: the only wait a refused job honours.
- `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` (requests and tokens) describe the
  provider's windows: the limit, what is left of it, and when it is whole again. The reset is *not* a wait: a window
  that refills in six minutes may take the next call in one second. The fleet's budget (budget.py) reads them.
"""

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_DURATION_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in a rate-limit header: Go-style durations ("1s", "6m0s", "250ms", "1h2m3.5s") or a bare number of
    seconds. None when the text is neither."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _DURATION_UNIT_S[unit] for number, unit in parts)


def _retry_after_value(text: str, now: float) -> float | None:
    """Retry-After is delta-seconds or an HTTP date (RFC 9110)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() - now


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def retry_after_hint(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait the provider asked for, in seconds: retry-after-ms when readable, else retry-after; None when it
    asked for none (the reset headers are not read: see the module's docstring). A date in the past is a wait of 0;
    a negative or NaN number is no hint."""
    lowered = _lowered(headers)
    candidates: list[float | None] = []
    if "retry-after-ms" in lowered:
        ms = parse_duration(lowered["retry-after-ms"])
        candidates.append(ms / 1000 if ms is not None else None)
    if "retry-after" in lowered:
        text = lowered["retry-after"]
        wait = _retry_after_value(text, time.time() if now is None else now)
        is_date = _number_or_none(text) is None
        # A date already past means "now"; a negative number is no hint at all.
        candidates.append(max(wait, 0.0) if wait is not None and is_date else wait)
    for wait in candidates:
        if wait is not None and not math.isnan(wait) and wait >= 0:
            return wait
    return None


def _number_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class WindowState:
    """One of the provider's windows (requests or tokens) as a response describes it; None where not said."""

    limit: float | None
    remaining: float | None
    reset_s: float | None

    @property
    def known(self) -> bool:
        return self.limit is not None or self.remaining is not None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 and value != float("inf") else None  # NaN fails >= 0 too


def window_state(headers: Mapping[str, str], kind: str) -> WindowState:
    """The `kind` ("requests" or "tokens") window from x-ratelimit-limit-*, -remaining-* and -reset-*."""
    lowered = _lowered(headers)
    reset = lowered.get(f"x-ratelimit-reset-{kind}")
    return WindowState(limit=_number(lowered.get(f"x-ratelimit-limit-{kind}")),
                       remaining=_number(lowered.get(f"x-ratelimit-remaining-{kind}")),
                       reset_s=parse_duration(reset) if reset is not None else None)
