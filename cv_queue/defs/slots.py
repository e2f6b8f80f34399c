"""Worker slots as dynamic partitions: the slots of the layout recorded in the broker, not of the settings the
code location loaded with.

A re-layout (`relayout_worker_fleet`, or `cv-queue fleet relayout`) records a new layout in the broker
(cv_queue/kafka/fleet/layout.py). The fleet sensor reads it on every tick and keeps the `worker_slots` partitions
equal to its slots, so the launchpad's slot picker and the sensor's run requests follow a re-layout without a
code-location reload. Before anything is recorded (the first start), the settings' layout is the one used.
"""

from collections.abc import Sequence

import dagster as dg

from cv_queue.defs.resources import KafkaResource
from cv_queue.kafka.fleet.layout import Layout, adopt_recorded_layout
from cv_queue.settings import QueueSettings

WORKER_SLOTS = dg.DynamicPartitionsDefinition(name="worker_slots")

SlotRequest = dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest


def fleet_layout(kafka: KafkaResource, settings: QueueSettings) -> Layout:
    """The recorded layout (the settings' before the first worker recorded one)."""
    return Layout.of(adopt_recorded_layout(kafka.connection(), kafka.admin(), settings))


def slot_partition_requests(instance: dg.DagsterInstance, slots: Sequence[str]) -> list[SlotRequest]:
    """What turns the `worker_slots` partitions into exactly `slots`."""
    have = set(instance.get_dynamic_partitions(WORKER_SLOTS.name))
    requests: list[SlotRequest] = []
    if added := [s for s in slots if s not in have]:
        requests.append(WORKER_SLOTS.build_add_request(added))
    if gone := sorted(have - set(slots)):
        requests.append(WORKER_SLOTS.build_delete_request(gone))
    return requests


def set_worker_slots(instance: dg.DagsterInstance, slots: Sequence[str]) -> None:
    """Apply slot_partition_requests at once (from a run, where no SensorResult carries them)."""
    for request in slot_partition_requests(instance, slots):
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(WORKER_SLOTS.name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(WORKER_SLOTS.name, key)
