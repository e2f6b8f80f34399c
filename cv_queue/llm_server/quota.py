"""Rate limits like a provider's: requests and tokens per minute, per API key, with OpenAI's headers.

Each limit is a bucket that holds a minute's allowance and refills continuously (limit / 60 per second), which is
how OpenAI describes its limits: a client may burst up to the whole minute, then gets the refill rate. A request is
charged when it arrives, before any work: one request, and its prompt's tokens plus the completion tokens it asks
for (max_tokens), as OpenAI reserves them. A request that does not fit gets 429 with `retry-after` and
`retry-after-ms` (when the bucket will hold it) and nothing is charged. Every response on a limited server says how
full the buckets are: `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` (Go-style
durations until the bucket is whole again), for requests and for tokens.
"""

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: "250ms", "1s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass
class Bucket:
    """A per-minute limit: `level` of `capacity` is available now, refilling at capacity / 60 per second."""

    capacity: float
    level: float
    at: float

    @classmethod
    def full(cls, per_minute: float, now: float) -> "Bucket":
        return cls(capacity=per_minute, level=per_minute, at=now)

    @property
    def rate_per_s(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate_per_s)
        self.at = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` fits (0: now; inf: never, it is more than the whole minute)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate_per_s)

    def reset_s(self) -> float:
        return (self.capacity - self.level) / self.rate_per_s


@dataclass
class Verdict:
    admitted: bool
    headers: dict[str, str]
    message: str = ""


@dataclass
class Quotas:
    """Requests and tokens per minute per API key (None: unlimited)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)
    admitted: Counter[str] = field(default_factory=Counter)  # requests per key
    tokens: Counter[str] = field(default_factory=Counter)  # tokens charged per key
    refused: Counter[str] = field(default_factory=Counter)  # 429s per key

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None

    def _limits(self) -> dict[str, float]:
        limits = {"requests": self.requests_per_minute, "tokens": self.tokens_per_minute}
        return {kind: limit for kind, limit in limits.items() if limit is not None}

    def charge(self, key: str, tokens: int) -> Verdict:
        """Admit one request of `tokens` for `key` (charging both buckets), or refuse it with its wait."""
        now = self.clock()
        wanted = {"requests": 1.0, "tokens": float(tokens)}
        buckets = {}
        for kind, limit in self._limits().items():
            bucket = self._buckets.setdefault((key, kind), Bucket.full(limit, now))
            bucket.refill(now)
            buckets[kind] = bucket
        wait = max((bucket.wait_s(wanted[kind]) for kind, bucket in buckets.items()), default=0.0)
        if wait == 0.0:
            for kind, bucket in buckets.items():
                bucket.level -= wanted[kind]
            self.admitted[key] += 1
            self.tokens[key] += tokens
        headers = self._state(buckets)
        if wait == 0.0:
            return Verdict(True, headers)
        self.refused[key] += 1
        if math.isinf(wait):
            return Verdict(False, headers, f"Request too large: {tokens} tokens, over the limit of "
                                           f"{self.tokens_per_minute:g} tokens per minute.")
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        which = " and ".join(kind for kind, bucket in buckets.items() if bucket.wait_s(wanted[kind]) > 0)
        return Verdict(False, headers, f"Rate limit reached for {which} per minute. Please try again in "
                                       f"{go_duration(wait)}.")

    @staticmethod
    def _state(buckets: dict[str, Bucket]) -> dict[str, str]:
        headers = {}
        for kind, bucket in buckets.items():
            headers[f"x-ratelimit-limit-{kind}"] = f"{bucket.capacity:g}"
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
            headers[f"x-ratelimit-reset-{kind}"] = go_duration(bucket.reset_s())
        return headers

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {"admitted": dict(self.admitted), "tokens": dict(self.tokens), "refused": dict(self.refused)}

    def reset(self) -> None:
        self.admitted.clear()
        self.tokens.clear()
        self.refused.clear()
