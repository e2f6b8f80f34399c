"""Which workers are alive, as the broker sees them: membership of a presence group.

Workers *assign* their partitions (worker/partition_worker.py), so they never join the worker group `settings.group_id`:
describing that group shows its committed offsets and no members, whether a hundred workers run or none. Nor do open
transactions tell (an idle worker has none). So each worker also runs a small consumer that *subscribes* to the layout
topic in the group `<group_id>.alive`, on a thread of its own that only keeps its membership: Kafka's own liveness
protocol (heartbeats, a session timeout) then answers "is any worker alive?" through describe_consumer_groups, the same
way for CLI workers, Dagster runs and containers. A worker that stops leaves the group at once; one that was killed
drops out when its session times out (SESSION_TIMEOUT_MS). Its client id names the slot and layout, so a refusal can say
which worker is in the way.
"""

import logging
import re
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel

from cv_queue.kafka.admin.names import layout_topic, presence_group
from cv_queue.kafka.client.auth import authorization_code
from cv_queue.kafka.client.client_log import CLIENT_LOG
from cv_queue.kafka.fleet.layout import Layout
from cv_queue.settings import KafkaConnection, QueueSettings, Slot

log = logging.getLogger("cv_queue.worker")

SESSION_TIMEOUT_MS = 10_000  # a killed worker counts as alive for at most this long
HEARTBEAT_INTERVAL_MS = 2_000
POLL_S = 0.5
REJOIN_PAUSE_S = 1.0


class LiveWorker(BaseModel):
    """A member of the presence group."""

    client_id: str
    host: str
    member_id: str

    def describe(self) -> str:
        return f"{self.client_id} on {self.host}"


def member_client_id(conn: KafkaConnection, layout: Layout, slot: Slot) -> str:
    """What a worker's presence consumer calls itself: the slot and the layout it serves, so that a re-layout can
    name it and the fleet sensor can tell which slots have a live worker."""
    return f"{conn.client_id}-worker-{slot.name}-of-{layout.partitions}x{layout.partitions_per_worker}"


_MEMBER_SLOT = re.compile(r"-worker-(?P<slot>\d+(?:[-_]\d+)*)-of-(?P<partitions>\d+)x(?P<per_worker>\d+)$")


def member_slot(client_id: str, layout: Layout) -> str | None:
    """The slot a presence member serves, if it serves one of `layout`; None for another layout or another client."""
    match = _MEMBER_SLOT.search(client_id)
    if match is None or (int(match["partitions"]), int(match["per_worker"])) != (layout.partitions,
                                                                                 layout.partitions_per_worker):
        return None
    return match["slot"]


class FleetPresence:
    """A worker's membership of the presence group, kept by its own thread until `close`."""

    def __init__(self, conn: KafkaConnection, settings: QueueSettings, slot: Slot) -> None:
        layout = Layout.of(settings)
        conf = conn.client_config()
        conf.update({
            "client.id": member_client_id(conn, layout, slot),
            "group.id": presence_group(settings),
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            "error_cb": self._on_error,
            "logger": CLIENT_LOG,
        })
        self._group = presence_group(settings)
        self._conf, self._topic = conf, layout_topic(settings)
        self.denial: KafkaError | None = None  # an authorization error: joining will never succeed
        self.rejoins = 0
        self._joined = threading.Event()
        self._closing = threading.Event()
        self._consumer = self._subscribed()
        self._thread = threading.Thread(target=self._keep, name=f"cvq-presence-{slot.name}", daemon=True)
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        if authorization_code(err) is not None and self.denial is None:
            self.denial = err
        CLIENT_LOG.error_cb(err)

    def _on_assign(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        self._joined.set()  # every member is called, with or without the topic's one partition

    def _subscribed(self) -> Consumer:
        consumer = Consumer(self._conf)
        consumer.subscribe([self._topic], on_assign=self._on_assign)
        return consumer

    def _keep(self) -> None:
        """Poll until closed. A consumer that fails is replaced, never given up: a worker missing from the group
        would look dead to the fleet sensor, which would fail its run and start a replacement
        (cv_queue/defs/liveness.py)."""
        while not self._closing.is_set():
            try:
                msg = self._consumer.poll(POLL_S)  # serves heartbeats and rebalances; the records are not needed
                if msg is not None and msg.error() is not None and authorization_code(msg.error()) is not None:
                    self.denial = self.denial or msg.error()
            except (KafkaException, RuntimeError) as exc:
                log.warning("presence consumer failed (%s); rejoining %s with a new one", exc, self._group)
                self._close_consumer()
                if self._closing.wait(REJOIN_PAUSE_S):
                    return
                self.rejoins += 1
                try:
                    self._consumer = self._subscribed()
                except (KafkaException, RuntimeError) as again:
                    log.warning("presence consumer could not be made (%s); trying again", again)
                    continue
        self._close_consumer()

    def _close_consumer(self) -> None:
        try:
            self._consumer.close()  # leaves the group now rather than at the session timeout
        except (KafkaException, RuntimeError) as exc:
            log.debug("presence consumer close: %s", exc)

    def wait_joined(self, timeout_s: float) -> bool:
        """True once in the group; False after `timeout_s`, or at once when the broker denied the group or topic
        (then `denial` holds the error)."""
        deadline = time.monotonic() + timeout_s
        while not self._joined.wait(0.2) and self.denial is None and time.monotonic() < deadline:
            pass
        joined = self._joined.is_set()
        if not joined and self.denial is None:
            log.warning("presence group %s not joined within %.0fs; a re-layout may not see this worker yet",
                        self._group, timeout_s)
        return joined

    def close(self, timeout_s: float = 10.0) -> None:
        self._closing.set()
        self._thread.join(timeout_s)


def live_workers(admin: AdminClient, settings: QueueSettings, timeout_s: float = 30.0) -> list[LiveWorker]:
    """The members of the presence group: every worker that has not stopped (or not yet timed out)."""
    group = presence_group(settings)
    try:
        description = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result()
    except KafkaException as exc:  # Kafka 4 answers GROUP_ID_NOT_FOUND for a group no worker ever joined
        if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND:
            return []
        raise
    return [LiveWorker(client_id=m.client_id, host=m.host, member_id=m.member_id) for m in description.members]


def live_slots(admin: AdminClient, settings: QueueSettings, timeout_s: float = 30.0) -> set[str]:
    """The slots of the settings' layout that have a live worker (any worker: a Dagster run, a CLI one, a pod)."""
    layout = Layout.of(settings)
    return {slot for member in live_workers(admin, settings, timeout_s)
            if (slot := member_slot(member.client_id, layout)) is not None}
