"""Retry records of one key (a job enqueued again under its id) run in offset order even when the younger one is due
first: outputs are produced as soon as a job is done, so running it first would publish the key out of order."""

import pytest

from cv_queue import headers as h
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.wire.records import SourceRecord
from cv_queue.kafka.worker import intake as intake_module
from cv_queue.kafka.worker.intake import Intake
from cv_queue.settings import QueueSettings

NOW = 1_000_000_000_000


def retry_record(settings: QueueSettings, offset: int, key: bytes, due_ms: int) -> SourceRecord:
    job = next(iter(sample_jobs(1, seed=offset))).model_copy(update={"job_id": key.decode()})
    headers = [(h.ATTEMPTS, b"1"), (h.HANDLER_CALLS, b"1"), (h.RETRY_DUE_AT, str(due_ms).encode())]
    return SourceRecord(topic=settings.topic_names.retry, partition=0, offset=offset, timestamp_ms=NOW - 1000,
                        key=key, value=job.to_bytes(), headers=headers)


def test_a_younger_retry_of_a_key_waits_for_the_older_one(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = QueueSettings(namespace="t")
    clock = [NOW]
    monkeypatch.setattr(intake_module, "now_ms", lambda: clock[0])
    intake = Intake(settings, router=None, track=lambda _s: True, settle=lambda *_a: None)  # type: ignore[arg-type]
    intake._accept(retry_record(settings, 10, b"key-a", NOW + 5_000))  # older, due in 5 s
    intake._accept(retry_record(settings, 11, b"key-a", NOW - 1))  # younger, already due
    intake._accept(retry_record(settings, 12, b"key-b", NOW - 1))  # another key: not held
    assert [t.delivery.source.offset for t in intake.take_ready()] == [12]
    clock[0] = NOW + 5_000
    intake.release_due()
    assert [t.delivery.source.offset for t in intake.take_ready()] == [10, 11]
    assert intake._waiting_lanes == {} and intake.waiting_by_partition == {0: 0}
