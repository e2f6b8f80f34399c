"""Permanent failures and invalid payloads land in the DLQ at once, with full provenance, byte-exact."""

import json

from confluent_kafka import Producer

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue.messages import EvaluationResult
from cv_queue_tests.support import read_topic, running_workers, tuned

ALL_DLQ_HEADERS = (h.ORIGINAL_TOPIC, h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET, h.ORIGINAL_TIMESTAMP,
                   h.ERROR_CATEGORY, h.ERROR_CLASS, h.ERROR_MESSAGE, h.ERROR_STACKTRACE, h.ATTEMPTS,
                   h.FIRST_FAILED_AT, h.FAILED_AT, h.WORKER, h.REPLAYS)


def test_permanent_failure_is_dead_lettered_with_every_header(conn, provisioned):
    job = next(sample_jobs(1, seed=77, labels_for={0: {"simulate": "permanent"}}))
    original_headers = [("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"), ("tenant", b"acme")]
    delivery = JobProducer(conn, provisioned.topic_names.main).enqueue(job, headers=original_headers)
    with running_workers(conn, provisioned, handler=SimulatedLLM(latency_ms=0)):
        [msg] = read_topic(conn, provisioned.topic_names.dlq, expect=1, timeout_s=30)
    names = {k for k, _ in msg.headers()}
    assert set(ALL_DLQ_HEADERS) <= names
    letter = read_dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers())
    assert letter.key == job.key and letter.value == job.to_bytes()
    assert letter.headers == original_headers
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        delivery.topic, delivery.partition, delivery.offset)
    assert letter.category == ErrorCategory.PERMANENT
    assert letter.error_class == "cv_queue.errors.PermanentJobError"
    assert "simulated permanent failure" in letter.error_message and "Traceback" in letter.error_stacktrace
    assert letter.attempts == 1 and letter.replays == 0
    assert letter.worker.endswith(":" + next(s.name for s in provisioned.slots()
                                             if delivery.partition in s.partitions))
    assert msg.partition() == provisioned.dlq_partition(ErrorCategory.PERMANENT, job.key)
    assert not read_topic(conn, provisioned.topic_names.retry, idle_s=0.5)  # no retries for permanent


def test_invalid_payloads_are_dead_lettered_without_retries_and_the_worker_stays_up(conn, provisioned):
    settings = tuned(provisioned, worker={"max_job_bytes": 4096})
    good = list(sample_jobs(2, seed=3))
    body = json.loads(good[0].to_bytes())
    # reason -> (key, value, headers); wrong field types are "schema_invalid"
    cases: dict[str, tuple[bytes | None, bytes | None, list]] = {
        "not_json": (b"k1", b"certainly not json", []),
        "schema_invalid": (b"k2", json.dumps({**body, "job_id": "k2", "cv_id": 12}).encode(), []),
        "missing_field": (b"k3", json.dumps({"job_id": "k3"}).encode(), []),
        "unknown_schema_version": (b"k4", json.dumps({**body, "job_id": "k4", "schema_version": 9}).encode(), []),
        "null_value": (b"k5", None, []),
        "bad_utf8": (b"k6", b'{"job_id": "\xc3\x28"}', []),
        "oversize": (b"k7", json.dumps({**body, "job_id": "k7", "cv_text": "x" * 10_000}).encode(), []),
        "garbage_header": (b"k8", json.dumps({**body, "job_id": "k8"}).encode(), [("cvq.replays", b"\xff\xfe")]),
        "key_mismatch": (b"not-k9", json.dumps({**body, "job_id": "k9"}).encode(), []),
        "not_object": (b"k10", b'"just a string"', []),
    }
    raw = Producer(conn.client_config())
    for key, value, headers in cases.values():
        raw.produce(settings.topic_names.main, key=key, value=value, headers=headers or None, partition=0)
    raw.flush(10)
    after = good[1]
    raw.produce(settings.topic_names.main, key=after.key, value=after.to_bytes(), partition=0)
    raw.flush(10)

    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)) as workers:
        letters = read_topic(conn, settings.topic_names.dlq, expect=len(cases), timeout_s=30)
        [result] = read_topic(conn, settings.topic_names.results, expect=1, timeout_s=30)
        stats = [w.join() for w in workers]

    assert EvaluationResult.model_validate_json(result.value()).job_id == after.job_id  # the worker stayed up
    decoded = [read_dead_letter(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers())
               for m in letters]
    assert all(m.partition() == settings.dlq_partition(ErrorCategory.INVALID_PAYLOAD, m.key()) for m in letters)
    reasons = {}
    for letter in decoded:
        assert letter.category == ErrorCategory.INVALID_PAYLOAD
        assert letter.attempts == 0  # never retried, never handed to the handler
        assert letter.error_class == "cv_queue.errors.InvalidPayloadError"
        reasons[letter.key] = letter.error_message.split(":")[0]
    assert reasons == {key: reason for reason, (key, _, _) in cases.items()}
    by_key = {letter.key: letter for letter in decoded}
    for key, value, headers in cases.values():
        assert by_key[key].value == value  # byte-exact, bad UTF-8 and null included
        assert by_key[key].headers == [kv for kv in headers if not kv[0].startswith("cvq.")]
    assert sum(s.invalid for s in stats) == len(cases)
    assert all(s.stop_reason == "stopped" for s in stats)
    assert not read_topic(conn, settings.topic_names.retry, idle_s=0.5)
