"""Dagster fixtures: resources aimed at the test broker and a temporary instance."""

from collections.abc import Iterator

import dagster as dg
import pytest

from cv_queue.defs.alerts_resource import AlertsResource
from cv_queue.defs.resources import KafkaResource, QueueResource


@pytest.fixture
def resources(bootstrap, namespace) -> dict:
    return {"kafka": KafkaResource(bootstrap_servers=bootstrap, namespace=namespace), "queue": QueueResource(),
            "alerts": AlertsResource()}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst
