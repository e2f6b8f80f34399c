"""Replay's promise under a crash: a letter is republished once, whatever point of its transaction the process dies.

`cv-queue dlq replay` moves 2,500 planted letters in transactions of 1,000 (each commits its republished jobs with the
DLQ offsets it consumed). The process SIGKILLs itself (CVQ_FAULT) in its 2nd transaction: after producing the jobs,
after sending the offsets, or right after the commit. A second replay then finishes the work. Read read_committed,
the main topic must hold every planted job exactly once. A replay that committed its DLQ offsets outside the
transaction would republish the killed batch twice, or lose it.
"""

import json
import os
import re
import signal
import subprocess
from collections import Counter

import pytest
from confluent_kafka import Producer

from cv_queue.errors import ErrorCategory, PermanentJobError, TransientJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.wire.envelope import Failure, SourceRecord, dead_letter_record, now_ms
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.support import read_topic, unique

LETTERS = 2500  # three transactions of at most 1,000 (ReplayRequest.batch_size)


def plant_letters(conn: KafkaConnection, settings: QueueSettings) -> set[str]:
    """LETTERS transient dead letters, failed a minute ago; returns their job ids."""
    producer = Producer({**conn.client_config(), "linger.ms": 20})
    failure = Failure.from_exception(TransientJobError("upstream timeout"), ErrorCategory.TRANSIENT)
    failed_at = now_ms() - 60_000
    partition = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    ids = set()
    for i, job in enumerate(sample_jobs(LETTERS, seed=51, prefix=unique("dead-"))):
        source = SourceRecord(topic=settings.topic_names.main, partition=i % 8, offset=i, timestamp_ms=failed_at,
                              key=job.key, value=job.to_bytes(), headers=[])
        out = dead_letter_record(source, failure, 5, 7, "test", settings.topic_names.dlq, partition, failed_at)
        producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers, partition=out.partition)
        ids.add(job.job_id)
    assert producer.flush(60) == 0
    return ids


def replay(settings: QueueSettings, fault: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVQ_NAMESPACE": settings.namespace}
    env.pop("CVQ_FAULT", None)
    if fault:
        env["CVQ_FAULT"] = fault
    return subprocess.run([CV_QUEUE, "dlq", "replay"], capture_output=True, text=True, timeout=180, env=env)


def killed_then_run_again(settings: QueueSettings, point: str) -> subprocess.CompletedProcess:
    """A replay SIGKILLed at `point` of its 2nd transaction, then a replay run to the end; returns the second."""
    fault = f"{point}@2:kill"
    killed = replay(settings, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert f"CVQ_FAULT={fault}: injecting it now" in killed.stderr
    finished = replay(settings, None)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished


@pytest.mark.chaos
@pytest.mark.parametrize("point", ["after_produce", "after_send_offsets", "after_commit"])
def test_a_replay_killed_in_its_transaction_then_run_again_republishes_each_letter_once(conn, provisioned, point):
    settings = provisioned
    planted = plant_letters(conn, settings)
    finished = killed_then_run_again(settings, point)
    # The first run committed one transaction (two when killed after its second commit); the second did the rest.
    first_batches = 2 if point == "after_commit" else 1
    assert f"replayed {LETTERS - 1000 * first_batches}," in finished.stdout, finished.stdout

    republished = Counter(m.key().decode() for m in read_topic(conn, settings.topic_names.main, timeout_s=60))
    assert set(republished) == planted, f"lost {len(planted - set(republished))} letter(s)"
    twice = [job for job, n in republished.items() if n > 1]
    assert not twice, f"{len(twice)} letter(s) republished twice, e.g. {twice[:5]}"
    assert "replayed 0," in replay(settings, None).stdout  # nothing left, nothing moved again


def test_a_letter_too_large_for_the_main_topic_is_parked_and_its_category_replays_on(conn, provisioned):
    """A 1.5 MB dead letter (the DLQ takes 2 MiB, the main topic 1 MiB) used to fail the replay's producer, and every
    later run stopped at the same letter. Now it is parked, whole, and the letters behind it are replayed."""
    settings = provisioned
    failure = Failure.from_exception(TransientJobError("upstream timeout"), ErrorCategory.TRANSIENT)
    failed_at = now_ms() - 60_000
    partition = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    big, *small = sample_jobs(3, seed=52, prefix=unique("big-"))
    big = big.model_copy(update={"cv_text": "x" * 1_500_000})
    producer = Producer({**conn.client_config(), "message.max.bytes": 4_000_000})
    for i, job in enumerate([big, *small]):
        source = SourceRecord(topic=settings.topic_names.main, partition=0, offset=i, timestamp_ms=failed_at,
                              key=job.key, value=job.to_bytes(), headers=[])
        out = dead_letter_record(source, failure, 5, 7, "test", settings.topic_names.dlq, partition, failed_at)
        producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers, partition=out.partition)
    assert producer.flush(60) == 0

    done = replay(settings, None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replayed 2, parked 1" in done.stdout, done.stdout
    parked = read_topic(conn, settings.topic_names.parked, timeout_s=60)
    assert [m.value() for m in parked] == [big.to_bytes()]  # whole: the parking lot takes it
    assert b"do not fit" in dict(parked[0].headers())["cvq.parked.reason"]
    main = read_topic(conn, settings.topic_names.main, timeout_s=60)
    assert sorted(m.key() for m in main) == sorted(j.key for j in small)


def plant_misfiled_letters(conn: KafkaConnection, settings: QueueSettings) -> tuple[set[str], set[str]]:
    """LETTERS dead letters in the transient partition, every 4th of them a permanent one filed there by mistake (its
    header says permanent); returns the job ids of the transient letters and of the misfiled ones."""
    producer = Producer({**conn.client_config(), "linger.ms": 20})
    transient = Failure.from_exception(TransientJobError("upstream timeout"), ErrorCategory.TRANSIENT)
    permanent = Failure.from_exception(PermanentJobError("no such model"), ErrorCategory.PERMANENT)
    failed_at = now_ms() - 60_000
    partition = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    replayable, misfiled = set(), set()
    for i, job in enumerate(sample_jobs(LETTERS, seed=53, prefix=unique("mixed-"))):
        source = SourceRecord(topic=settings.topic_names.main, partition=i % 8, offset=i, timestamp_ms=failed_at,
                              key=job.key, value=job.to_bytes(), headers=[])
        failure = permanent if i % 4 == 3 else transient
        out = dead_letter_record(source, failure, 5, 7, "test", settings.topic_names.dlq, partition, failed_at)
        producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers, partition=out.partition)
        (misfiled if failure is permanent else replayable).add(job.job_id)
    assert producer.flush(60) == 0
    return replayable, misfiled


@pytest.mark.chaos
@pytest.mark.parametrize("point", ["after_produce", "after_send_offsets"])
def test_a_replay_killed_between_refiling_and_committing_refiles_and_replays_each_letter_once(conn, provisioned,
                                                                                              point):
    """Refiles ride in the replay's transaction: killed after producing a batch of replayed jobs and refiled letters
    but before its commit, a rerun must neither refile nor replay any letter of that batch twice, nor lose one."""
    settings = provisioned
    names = settings.topic_names
    replayable, misfiled = plant_misfiled_letters(conn, settings)
    finished = killed_then_run_again(settings, point)
    # The first run committed its first transaction (1,000 letters or more), the rerun did the rest.
    rerun = re.search(r"replayed (\d+), parked 0 .*; moved (\d+) letter\(s\)", finished.stdout)
    assert rerun, finished.stdout
    assert 0 < int(rerun[1]) < len(replayable) and 0 < int(rerun[2]) < len(misfiled), finished.stdout

    replayed = Counter(json.loads(m.value())["job_id"] for m in read_topic(conn, names.main, timeout_s=60))
    assert replayed == Counter(dict.fromkeys(replayable, 1)), "a replayable letter lost, or replayed twice"
    permanent_p = settings.dlq_partition(ErrorCategory.PERMANENT, None)
    refiled = Counter(json.loads(m.value())["job_id"] for m in read_topic(conn, names.dlq, timeout_s=60)
                      if m.partition() == permanent_p)
    assert refiled == Counter(dict.fromkeys(misfiled, 1)), "a misfiled letter lost, or refiled twice"
    again = replay(settings, None)
    assert "replayed 0," in again.stdout and "moved" not in again.stdout  # nothing left, nothing moved again
