"""Client error reports during an outage: once per kind, then a periodic summary, then the all-clear."""

import logging

import pytest
from confluent_kafka import KafkaError

from cv_queue.kafka.client import client_log
from cv_queue.kafka.client.client_log import ClientLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_logged_once_per_kind_then_summarised(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    monkeypatch.setattr(client_log.time, "monotonic", clock)
    log = ClientLog(logging.getLogger("test.client"), summary_interval_s=30)
    caplog.set_level(logging.INFO, logger="test.client")
    transport = KafkaError(KafkaError._TRANSPORT, "Connection refused")
    for _ in range(70 * 40):  # 70 s at 40 reports a second, as one worker made in a real outage
        clock.now += 0.025
        log.error_cb(transport)
        log.log(logging.WARNING, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect to ipv4#127.0.0.1:9092 failed")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 + 2, lines  # one per kind, then a summary at 30 s and 60 s
    assert sum("suppressed" in line for line in lines) == 2
    clock.now += 10
    log.tick()
    assert "stopped after" in caplog.records[-1].getMessage()
    caplog.clear()
    log.error_cb(transport)  # a new outage is reported again at once
    assert len(caplog.records) == 1


def test_fatal_errors_are_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    log = ClientLog(logging.getLogger("test.fatal"))
    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    with caplog.at_level(logging.ERROR, logger="test.fatal"):
        for _ in range(3):
            log.error_cb(fatal)
    assert len(caplog.records) == 3
