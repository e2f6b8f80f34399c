"""Reading the layout record while the node asked does not serve the layout topic yet.

On a cluster, workers starting together race to create the layout topic; the node a worker's reader asks may learn
of it after the node that acknowledged the creation. The read waits for the topic instead of ending the worker's
start (it once did: exit 2 in the 3-node chaos test)."""

import threading
import time

import pytest

from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.layout import Layout, LayoutError, ensure_layout_topic, read_layout, write_layout


def test_a_read_waits_for_a_layout_topic_that_is_not_served_yet(conn, settings):
    def create_then_record() -> None:
        time.sleep(2.0)  # the read below has started and found no topic
        ensure_layout_topic(admin_client(conn), settings)
        write_layout(conn, settings, Layout.of(settings), generation=1)

    creator = threading.Thread(target=create_then_record)
    creator.start()
    try:
        record = read_layout(conn, settings)
    finally:
        creator.join()
    # The topic appeared during the read, with or without the record in it yet; once it did, the record is read.
    record = record or read_layout(conn, settings)
    assert record is not None and record.layout == Layout.of(settings) and record.generation == 1


def test_a_layout_topic_that_never_appears_is_a_layout_error_naming_it(conn, settings, monkeypatch):
    monkeypatch.setattr("cv_queue.kafka.fleet.layout.READ_TIMEOUT_S", 3.0)
    with pytest.raises(LayoutError, match=settings.namespace):
        read_layout(conn, settings)
