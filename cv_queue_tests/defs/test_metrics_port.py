"""The metrics endpoint of a Dagster run: served on the slot's port while the block runs, and never a reason for
the run to fail (port taken, metrics off, metrics module missing: a line in the log, and the run goes on).

Until the metrics module (cv_queue.kafka.metrics) is on this branch, a stand-in with the same contract serves
a real HTTP endpoint; once it is, the real one is used."""

import contextlib
import importlib.util
import logging
import socket
import sys
import threading
import types
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cv_queue.defs.metrics_port import metrics_endpoint, worker_metrics_port
from cv_queue.settings import MetricsSettings, QueueSettings, Slot
from cv_queue_tests.support import free_port_block

LOG = logging.getLogger("test.metrics_port")


class _StandInServer:
    def __init__(self, port: int, host: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"# stand-in\n")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)  # OSError when the port is taken, like the real one
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def metrics_module(monkeypatch):
    if importlib.util.find_spec("cv_queue.kafka.metrics") is None:
        module = types.ModuleType("cv_queue.kafka.metrics")
        module.start_metrics_server = _StandInServer
        monkeypatch.setitem(sys.modules, "cv_queue.kafka.metrics", module)


def _get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.status


def test_serves_while_the_block_runs_then_closes(metrics_module):
    port = free_port_block(width=1)
    with metrics_endpoint(MetricsSettings(), port, LOG) as served:
        assert served == port and _get(port) == 200
    with pytest.raises(urllib.error.URLError):
        _get(port)


def test_a_taken_port_is_a_warning_not_a_failure(metrics_module, caplog):
    caplog.set_level(logging.WARNING, logger=LOG.name)
    with contextlib.closing(socket.socket()) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with metrics_endpoint(MetricsSettings(), port, LOG) as served:
            assert served is None
    assert any(f"metrics port 127.0.0.1:{port} is not available" in r.getMessage() for r in caplog.records)


def test_disabled_or_missing_metrics_serve_nothing(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger=LOG.name)
    with metrics_endpoint(MetricsSettings(enabled=False), free_port_block(width=1), LOG) as served:
        assert served is None
    assert not caplog.records
    monkeypatch.setitem(sys.modules, "cv_queue.kafka.metrics", None)  # import fails
    with metrics_endpoint(MetricsSettings(), free_port_block(width=1), LOG) as served:
        assert served is None
    assert any("metrics unavailable" in r.getMessage() for r in caplog.records)


def test_each_slot_has_its_documented_port():
    settings = QueueSettings()
    ports = [worker_metrics_port(settings, Slot.parse(s)) for s in ("0-1", "2-3", "4-5", "6-7")]
    base = settings.metrics.worker_port_base
    assert ports == [base, base + 1, base + 2, base + 3]
