"""The names of the queue's broker resources that its topic specs (topics.py) and settings do not give: the layout
topic, its reader group, the presence group, and the spend ledger topic and its reader group.

They live here, below the fleet that uses them (fleet/layout.py records layouts in the layout topic, fleet/presence.py
keeps workers' membership in the presence group), so that acls.py can grant on them without importing the fleet.
"""

from cv_queue.settings import QueueSettings

LAYOUT_TOPIC = "cv-queue-layout"
SPEND_TOPIC = "cv-queue-spend"


def layout_topic(settings: QueueSettings) -> str:
    """The compacted topic the worker layout and the DLQ layout are recorded in."""
    return f"{settings.namespace}.{LAYOUT_TOPIC}" if settings.namespace else LAYOUT_TOPIC


def layout_reader_group(settings: QueueSettings) -> str:
    """The group id the layout reader's consumer carries (it commits nothing; librdkafka still looks it up)."""
    return f"{layout_topic(settings)}-reader"


def presence_group(settings: QueueSettings) -> str:
    """The group every live worker is a member of (fleet/presence.py)."""
    return f"{settings.group_id}.alive"


def spend_topic(settings: QueueSettings) -> str:
    """The compacted topic every worker publishes its LLM spend per window to (fleet/spend_ledger.py)."""
    return f"{settings.namespace}.{SPEND_TOPIC}" if settings.namespace else SPEND_TOPIC


def spend_reader_group(settings: QueueSettings) -> str:
    """The group id the spend ledger's readers carry (they commit nothing; librdkafka still looks it up)."""
    return f"{spend_topic(settings)}-reader"
