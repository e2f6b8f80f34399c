"""Lanes: interactive jobs before bulk ones.

A job is enqueued in a lane: `bulk` (the main topic, the default) or `interactive` (a topic of its own, laid out like
the main topic and read by the same worker slots, on the same exactly-once path). When the provider's budget is
tight, a worker starts its interactive jobs first, and bulk work fills what is left. Per-key order holds within a
lane; a key's jobs in two lanes are two streams.
"""

from enum import StrEnum


class Lane(StrEnum):
    BULK = "bulk"
    INTERACTIVE = "interactive"
