"""DLQ and parking-lot depth per partition, read every few seconds on a thread of its own.

Depth is a property of the topics, not of one worker, so any long-lived process can export it: every worker and
replay that serves metrics does (a dashboard takes the max over them). It is read with the AdminClient on its own
thread, never on a worker's poll loop, where a broker outage would stall the loop for the request timeouts.
"""

import logging
import threading

from cv_queue.kafka.admin.lag import group_lag, partition_count, retained_offsets
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.dlq_layout import DlqLayout, read_dlq_layout
from cv_queue.kafka.metrics import families as f
from cv_queue.settings import KafkaConnection, QueueSettings

log = logging.getLogger("cv_queue.metrics")

DEPTH_INTERVAL_S = 10.0


class DepthPoller:
    """Sets cvq_dlq_depth and cvq_parked_depth now and then every `interval_s` until `close`."""

    def __init__(self, conn: KafkaConnection, settings: QueueSettings, interval_s: float = DEPTH_INTERVAL_S) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self._conn = conn
        self._admin = admin_client(conn)
        self._recorded: DlqLayout | None = None  # kept once read: a recorded DLQ layout never changes
        self._stop = threading.Event()
        self._lock = threading.Lock()  # refresh() may also be called by the owner (after a replay run)
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="cvq-metrics-depth", daemon=True)

    def start(self) -> "DepthPoller":
        self._thread.start()
        return self

    def refresh(self) -> bool:
        """Read the depths once; False (and the previous values kept) when the broker could not answer."""
        names = self.settings.topic_names
        with self._lock:
            try:
                # Category labels by the recorded layout; these settings' only until one is recorded.
                self._recorded = self._recorded or read_dlq_layout(self._conn, self._admin, self.settings)
                layout = self._recorded or DlqLayout.of(self.settings)
                dlq = group_lag(self._admin, self.settings.replay_group_id, names.dlq, list(range(layout.partitions)))
                parked = retained_offsets(self._admin, names.parked,
                                          list(range(partition_count(self._admin, names.parked))))
            except Exception as exc:  # KafkaException mostly; a poller thread must outlive any one failure
                if not self._failing:  # once per outage, not every interval
                    log.warning("cannot read DLQ depth for metrics: %s", exc)
                self._failing = True
                return False
            self._failing = False
            for row in dlq:
                f.DLQ_DEPTH.labels(str(row.partition), layout.label(row.partition)).set(row.lag)
            for partition, retained in parked.items():
                f.PARKED_DEPTH.labels(str(partition)).set(retained)
            return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)
