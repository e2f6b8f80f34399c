"""Serving /metrics: a process's default registry over HTTP, on a port per worker slot or the replay port."""

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from cv_queue.kafka.metrics.depth import DepthPoller
from cv_queue.settings import KafkaConnection, QueueSettings

log = logging.getLogger("cv_queue.metrics")


class MetricsServer:
    """A running /metrics endpoint. `port` is the bound port (also when 0 was asked for); `close` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, host: str,
                 depth: DepthPoller | None = None) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.port: int = httpd.server_port
        self.depth = depth

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        if self.depth is not None:
            self.depth.close()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def start_metrics_server(port: int, host: str, conn: KafkaConnection | None = None,
                         settings: QueueSettings | None = None) -> MetricsServer:
    """Serve the default registry on host:port (0 = any free port); raises OSError when the port is taken.

    Given the connection and settings, the endpoint also exports the DLQ and parking-lot depth gauges, read every
    DEPTH_INTERVAL_S on a thread that `close` stops: depth belongs to no one process, and Prometheus alerts on
    it between replay runs too.
    """
    httpd, thread = start_http_server(port, addr=host)
    thread.name = "cvq-metrics-http"
    server = MetricsServer(httpd, thread, host)
    if conn is not None and settings is not None:
        server.depth = DepthPoller(conn, settings).start()
    log.info("serving metrics on %s", server.url)
    return server
