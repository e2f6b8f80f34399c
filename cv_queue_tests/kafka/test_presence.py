"""A worker's presence in the group is what the fleet sensor judges its run alive by (defs/liveness.py), so it must
outlast a failure of its own consumer: the membership is rejoined, and the broker names the slot again."""

from confluent_kafka import Consumer

from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.layout import ensure_layout_topic_as
from cv_queue.kafka.fleet.presence import FleetPresence, live_slots
from cv_queue.settings import Slot
from cv_queue_tests.support import wait_for


class _FailingPoll:
    """A consumer whose poll fails; closed (by the presence thread itself) it closes the real one."""

    def __init__(self, real: Consumer) -> None:
        self.real = real

    def poll(self, timeout: float) -> None:
        raise RuntimeError("simulated fatal consumer error")

    def close(self) -> None:
        self.real.close()


def test_a_failed_presence_consumer_is_replaced_and_the_slot_is_seen_again(conn, provisioned):
    settings = provisioned
    admin = admin_client(conn)
    ensure_layout_topic_as(conn, settings)
    presence = FleetPresence(conn, settings, Slot.parse("2-3"))
    try:
        assert presence.wait_joined(60)
        wait_for(lambda: live_slots(admin, settings) == {"2-3"}, 60, "the slot to be seen alive")
        presence._consumer = _FailingPoll(presence._consumer)  # its next poll raises, as a fatal client error does
        wait_for(lambda: presence.rejoins >= 1, 30, "the presence consumer to be replaced")
        wait_for(lambda: live_slots(admin, settings) == {"2-3"}, 60, "the slot to be seen alive again")
    finally:
        presence.close()
    wait_for(lambda: live_slots(admin, settings) == set(), 60, "the slot to leave the group when closed")
