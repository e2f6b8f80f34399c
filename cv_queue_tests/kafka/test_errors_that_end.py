"""Errors that end (issue 16, item 2), with real `cv-queue` processes: a replay into a missing target stops at once
with exit 10 instead of retrying for ever, and a worker whose results topic is deleted under it ends with exit 10
within worker.transaction_give_up_s instead of redoing its transaction every few seconds."""

import os
import subprocess
import time

from confluent_kafka import Producer

from cv_queue.errors import ErrorCategory, TransientJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import committed_offsets
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.failures import EXIT_TOPIC_STATE
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.wire.envelope import now_ms
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.kafka.procs import spawn_worker, stop_all
from cv_queue_tests.kafka.test_replay import _plant_letter
from cv_queue_tests.support import read_topic, wait_for

GIVE_UP_S = 10


def test_a_replay_into_a_missing_target_ends_at_once_with_exit_10_naming_it(conn, provisioned):
    settings = provisioned
    raw = Producer(conn.client_config())
    for i in range(3):
        _plant_letter(raw, settings, f"t{i}".encode(), TransientJobError("x"), ErrorCategory.TRANSIENT, now_ms())
    raw.flush(10)
    typo = f"{settings.topic_names.main}-typo"
    began = time.monotonic()
    # Before: the replay redid its first transaction every few seconds for ever (killed here at the timeout).
    proc = subprocess.run([CV_QUEUE, "dlq", "replay", "--target", typo], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "CVQ_NAMESPACE": settings.namespace}, check=False)
    assert proc.returncode == EXIT_TOPIC_STATE, proc.stderr
    assert time.monotonic() - began < 30
    assert f"the replay target {typo!r} does not exist" in proc.stderr and "Traceback" not in proc.stderr
    partitions = settings.dlq_partitions([ErrorCategory.TRANSIENT])
    offsets = committed_offsets(admin_client(conn), settings.replay_group_id, settings.topic_names.dlq, partitions)
    assert all(v is None for v in offsets.values()), "the refused replay committed DLQ offsets"


def test_a_worker_whose_results_topic_is_deleted_ends_with_exit_10_within_the_limit(conn, provisioned, tmp_path):
    settings = provisioned
    slot = settings.slots()[0]
    names = settings.topic_names
    producer = JobProducer(conn, names.main)
    first = producer.enqueue_batch(list(sample_jobs(40, seed=71, prefix="before")))
    log = tmp_path / "worker.log"
    # A record to a deleted topic fails only when it times out, after transaction.timeout.ms: 15 s, not 60, here.
    proc = spawn_worker(settings, slot.name, log, extra_env={"CVQ_WORKER__TRANSACTION_GIVE_UP_S": str(GIVE_UP_S),
                                                             "CVQ_WORKER__TRANSACTION_TIMEOUT_MS": "15000"})
    try:
        mine = sum(1 for d in first if d.partition in slot.partitions)
        read_topic(conn, names.results, expect=mine, timeout_s=90)
        admin = admin_client(conn)
        admin.delete_topics([names.results], operation_timeout=30)[names.results].result(60)
        wait_for(lambda: names.results not in admin.list_topics(timeout=10).topics, 60, "the results topic to go")
        deleted_at = time.monotonic()
        producer.enqueue_batch(list(sample_jobs(40, seed=72, prefix="after")))
        # Before: exit 4 ("fatal"), or the same transaction redone every few seconds for ever.
        code = proc.wait(GIVE_UP_S + 90)
        took = time.monotonic() - deleted_at
    finally:
        stop_all(proc)
    text = log.read_text(errors="replace")
    assert code == EXIT_TOPIC_STATE, text
    error = text.split("cannot continue", 1)[-1]
    assert f"the broker says of {names.results}: UNKNOWN_TOPIC_OR_PART" in error, "the error does not name the topic"
    assert took < GIVE_UP_S + 90
