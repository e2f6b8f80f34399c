"""The recorded DLQ layout: which DLQ partitions stand for which error category.

A dead letter is filed in its category's block of DLQ partitions (`QueueSettings.dlq_partition`), and everything
that reads offsets only (the DLQ sensor, replay's choice of partitions, depth metrics and checks, `cv-queue
status`) tells categories apart by partition number alone. That number comes from the category order and
CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY, which a process can be started with differently from the one that filed
the letters: at 2 per category instead of 1, partition 1 (rate_limited) reads as transient and partition 3
(invalid_payload) as rate_limited, so the sensor would replay invalid payloads it promises never to replay.

So the layout is recorded once, in the broker: the first worker start or provisioning writes the settings' layout
into the worker layout's compacted topic (layout.py). Workers, replays (by hand, from Dagster or from the
sensor), the sensor's ticks and provisioning then refuse settings that disagree with it (`DlqLayoutMismatchError`: a
LayoutMismatchError, so `cv-queue` exits with 9). Unlike the worker layout it never changes: letters already filed
cannot move, so a namespace keeps the DLQ layout it started with.

The FIRST DLQ layout record is the recorded layout, not the latest. Two first starts with different settings may
both read "nothing recorded" and both write: each then reads back the first record, so both see the same winner and
the other one is refused. (Read back the latest instead, the first to write could read its own record before the
second one lands, and both would run.) For the first record to stay first under compaction, which keeps only the
latest record of each key, every write has a key of its own (`dlq-layout/<uuid>`): compaction never drops a record
no later one of its key supersedes, and never reorders the log.

The layout topic is asked for by name (DescribeTopics), never looked for in a list of all topics: a broker with ACLs
leaves out of that list every topic the principal may not describe, and a replayer not yet granted the layout topic
(an upgraded cluster before `cv-queue acls apply` is re-run) would read "nothing recorded" and run unchecked. Asked
by name, the broker says TOPIC_AUTHORIZATION_FAILED: KafkaAuthorizationError naming the topic (exit 7).
"""

import uuid
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, Field

from cv_queue.errors import CATEGORY_ORDER
from cv_queue.kafka.admin.topics import ADMIN_TIMEOUT_S
from cv_queue.kafka.client.auth import authorization_code, denied
from cv_queue.kafka.client.failures import MISSING_TOPIC_CODES
from cv_queue.kafka.fleet.join import LayoutMismatchError
from cv_queue.kafka.fleet.layout import (
    append_record,
    denials_named,
    ensure_layout_topic,
    layout_topic,
    read_records,
)
from cv_queue.settings import KafkaConnection, QueueSettings

DLQ_LAYOUT_KEY = b"dlq-layout"  # every record's key starts with it: `dlq-layout/<uuid>`, one key per write
UNMAPPED = "unmapped"  # the label of a DLQ partition past the recorded blocks (a DLQ grown by hand)


class DlqLayoutMismatchError(LayoutMismatchError):
    """The settings would file or read dead letters under other categories than the recorded DLQ layout."""


class DlqLayout(BaseModel, frozen=True):
    """How the DLQ is partitioned: `per_category` partitions per category, in the order of `categories`.

    Categories are kept as plain strings: a record written by a version with other categories still reads, and
    is then refused as a mismatch instead of failing to parse."""

    per_category: int = Field(ge=1)
    categories: tuple[str, ...]

    @classmethod
    def of(cls, settings: QueueSettings) -> "DlqLayout":
        return cls(per_category=settings.topics.dlq_partitions_per_category,
                   categories=tuple(c.value for c in CATEGORY_ORDER))

    @property
    def partitions(self) -> int:
        return self.per_category * len(self.categories)

    def label(self, partition: int) -> str:
        """The category whose letters `partition` holds, or "unmapped"."""
        index = partition // self.per_category
        return self.categories[index] if 0 <= index < len(self.categories) else UNMAPPED

    def partitions_of(self, category: str) -> list[int]:
        if category not in self.categories:
            return []
        first = self.categories.index(category) * self.per_category
        return list(range(first, first + self.per_category))

    def describe(self) -> str:
        return (f"{self.per_category} DLQ partition(s) per category, {self.partitions} in all, in the order "
                f"{', '.join(self.categories)}")

    def same_as(self, other: "DlqLayout") -> bool:
        return (self.per_category, self.categories) == (other.per_category, other.categories)


class DlqLayoutRecord(DlqLayout, frozen=True):
    at: datetime


def _described_partitions(admin: AdminClient, topic: str) -> int | None:
    """The partition count of `topic`, asked for by name with DescribeTopics (which never creates a topic); None
    when it does not exist. KafkaException when the broker will not say, e.g. TOPIC_AUTHORIZATION_FAILED for a
    principal that may not describe it (a list of all topics would leave it out instead, as if it did not exist)."""
    try:
        described = admin.describe_topics(TopicCollection([topic]), request_timeout=ADMIN_TIMEOUT_S)[topic].result(
            timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() in MISSING_TOPIC_CODES:
            return None
        raise
    return len(described.partitions)


def _layout_topic_exists(admin: AdminClient, settings: QueueSettings) -> bool:
    return _described_partitions(admin, layout_topic(settings)) is not None


def _live_dlq_partitions(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings) -> int | None:
    dlq = settings.topic_names.dlq
    try:
        return _described_partitions(admin, dlq)
    except KafkaException as exc:  # named here: denials_named would name the layout topic
        if authorization_code(exc) is not None:
            raise denied(exc, conn, dlq, "DESCRIBE") from exc
        raise


def _is_dlq_layout_key(key: bytes | None) -> bool:
    # The bare key: records written before keys were made unique per write.
    return key is not None and (key == DLQ_LAYOUT_KEY or key.startswith(DLQ_LAYOUT_KEY + b"/"))


def read_dlq_layout(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings) -> DlqLayoutRecord | None:
    """The recorded DLQ layout: the first DLQ layout record of the layout topic; None when there is none, or no
    layout topic yet. A principal that may not describe or read the layout topic gets KafkaAuthorizationError."""
    with denials_named(conn, settings):
        if not _layout_topic_exists(admin, settings):
            return None
        records = read_records(conn, settings, _is_dlq_layout_key, "DLQ layout")
    return DlqLayoutRecord.model_validate_json(records[0][1]) if records else None


def recorded_dlq_layout(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings) -> DlqLayout:
    """What labels DLQ partitions with categories: the recorded layout, or the settings' while none is recorded.
    Never writes (status, metrics and checks only read)."""
    return read_dlq_layout(conn, admin, settings) or DlqLayout.of(settings)


def _setting_env(layout: DlqLayout) -> str:
    return f"CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY={layout.per_category}"


def _mismatch(settings: QueueSettings, recorded: DlqLayoutRecord, mine: DlqLayout) -> DlqLayoutMismatchError:
    if recorded.categories != mine.categories:
        how = ("this version of cv-queue orders (or names) the categories differently; run the version that "
               "recorded it against this namespace, or start a new namespace (CVQ_NAMESPACE) with this one")
    else:
        how = (f"start every worker, replay and Dagster process with {_setting_env(recorded)}. The DLQ layout of a "
               "namespace never changes, since letters already filed cannot move; for another one, start a new "
               "namespace (CVQ_NAMESPACE) and drain this one's DLQ with `cv-queue dlq replay` under the recorded "
               "setting")
    return DlqLayoutMismatchError(
        f"these settings give {mine.describe()} ({_setting_env(mine)}), but the DLQ layout recorded in "
        f"{layout_topic(settings)} on {recorded.at.isoformat()} is {recorded.describe()}: the dead letters already "
        f"in {settings.topic_names.dlq} would be read, replayed and counted as other categories. Nothing was "
        f"started; {how}.")


def check_dlq_layout(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings,
                     record: bool) -> DlqLayout:
    """Refuse settings whose DLQ layout is not the recorded one (DlqLayoutMismatchError); return the layout.

    With nothing recorded, the settings must at least agree with the DLQ's partition count (a DLQ made under other
    settings before any record existed). Then `record` (workers, provisioning: principals that may write the
    layout topic) records the settings' layout; without it (replay, the sensor) nothing is written and the next
    worker start records it. Two first records racing: the first one written wins, and the other start is refused
    by the re-read, which reads the first record too (see the module's doc).
    A principal denied the layout topic gets KafkaAuthorizationError naming it (exit 7), as at a worker's start.
    """
    with denials_named(conn, settings):
        return _check(conn, admin, settings, record)


def _check(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings, record: bool) -> DlqLayout:
    mine = DlqLayout.of(settings)
    recorded = read_dlq_layout(conn, admin, settings)
    if recorded is None:
        live = _live_dlq_partitions(conn, admin, settings)
        if live is not None and live != mine.partitions:
            count = len(mine.categories)
            hint = (f"start with CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY={live // count}, the setting it was made "
                    "with" if live % count == 0 else "use a new namespace (CVQ_NAMESPACE)")
            raise DlqLayoutMismatchError(
                f"no DLQ layout is recorded yet, and these settings give {mine.describe()} ({_setting_env(mine)}), "
                f"but {settings.topic_names.dlq} has {live} partitions: its letters were filed under other settings. "
                f"Nothing was started or recorded; {hint}.")
        if not record:
            return mine
        ensure_layout_topic(admin, settings)
        stamped = DlqLayoutRecord(per_category=mine.per_category, categories=mine.categories,
                                  at=datetime.now(UTC).replace(microsecond=0))
        key = DLQ_LAYOUT_KEY + b"/" + uuid.uuid4().hex.encode()  # a key of its own: see the module's doc
        append_record(conn, settings, key, stamped.model_dump_json().encode(), f"the DLQ layout ({mine.describe()})")
        recorded = read_dlq_layout(conn, admin, settings)
        if recorded is None:
            raise DlqLayoutMismatchError(f"the DLQ layout written to {layout_topic(settings)} cannot be read back")
    if not recorded.same_as(mine):
        raise _mismatch(settings, recorded, mine)
    return recorded
