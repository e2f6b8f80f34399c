"""Issue 8's poison mix, in one run: "each of these leaves its partition's other jobs flowing, and the worker keeps
serving: a hung handler; a BaseException; a 999,800-byte record; a one-day Retry-After; a non-UTF-8 header name;
a handler raising ValidationError."

Four worker processes (the default 8-partition layout), a few hundred normal jobs around ten poison records, one
poison per partition where possible. Every normal job must get exactly one result, every poison exactly its fate,
nothing twice anywhere; afterwards every worker is alive, serves a fresh batch, and exits 0 on SIGTERM.
"""

import time

import pytest

from cv_queue import headers as h
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.messages import EvaluationJob
from cv_queue_tests.chaos.fleet import WorkerFleet
from cv_queue_tests.chaos.ledger import OutcomeLedger
from cv_queue_tests.chaos.partitioning import jobs_on_partition, partition_for
from cv_queue_tests.chaos.poison import (
    FAULTS,
    HEADER_POISON_BYTES,
    OVERSIZE_BYTES,
    Fault,
    headers_are_undecodable,
    padded_to,
    send_oversize,
    send_with_undecodable_header,
)
from cv_queue_tests.support import read_topic

NORMAL_BEFORE = 200  # normal jobs enqueued ahead of the poison records
NORMAL_AFTER = 200  # and behind them: these must flow past the poison in its partition
NORMAL_LAST = 80  # after every poison settled: the workers still serve
JOB_TIMEOUT_S = 3  # the hung job times out twice (max_attempts=2) and is dead-lettered within the test
ENV = {"CVQ_WORKER__JOB_TIMEOUT_S": str(JOB_TIMEOUT_S), "CVQ_RETRY__MAX_ATTEMPTS": "2"}


@pytest.mark.chaos
def test_poison_mix_leaves_partitions_flowing_and_workers_serving(conn, provisioned, tmp_path):
    settings = provisioned
    names = settings.topic_names
    partitions = settings.topics.partitions
    producer = JobProducer(conn, names.main)
    before = list(sample_jobs(NORMAL_BEFORE, seed=21, prefix="before"))
    after = list(sample_jobs(NORMAL_AFTER, seed=22, prefix="after"))
    last = list(sample_jobs(NORMAL_LAST, seed=23, prefix="last"))
    # Poison i goes to partition i % 8: every partition, so every slot, gets at least one.
    placed: dict[str, tuple[Fault, int, EvaluationJob]] = {}
    for index, fault in enumerate(FAULTS):
        partition = index % partitions
        labels = {"simulate": fault.directive} if fault.directive else None
        [job] = jobs_on_partition(partition, partitions, 1, seed=index, prefix=f"poison{index}", labels=labels)
        placed[job.job_id] = (fault, partition, job)
    oversize_id = next(j for j, (f, _, _) in placed.items() if f.name == "999,800-byte record")
    header_id = next(j for j, (f, _, _) in placed.items() if f.name == "non-UTF-8 header name")
    oversize_value = padded_to(placed[oversize_id][2], OVERSIZE_BYTES)
    header_value = padded_to(placed[header_id][2], HEADER_POISON_BYTES)

    ledger = OutcomeLedger(conn, settings)
    fleet = WorkerFleet(settings, tmp_path, handler_options={"latency_ms": 5}, env=ENV)
    try:
        fleet.start()
        fleet.wait_started()
        enqueued_at = time.monotonic()
        sent = producer.enqueue_batch(before)
        for job_id, (_, partition, job) in placed.items():
            if job_id == oversize_id:
                send_oversize(conn, names.main, partition, job.key, oversize_value)
            elif job_id == header_id:
                send_with_undecodable_header(conn.bootstrap_servers, names.main, partition, job.key, header_value,
                                             settings.topics.main_config["compression.type"])
            else:
                [delivery] = producer.enqueue_batch([job])
                assert delivery.partition == partition == partition_for(job.key, partitions)
        sent += producer.enqueue_batch(after)
        assert headers_are_undecodable(conn, names.main, placed[header_id][1], placed[header_id][2].key), \
            "the header poison reached the topic readable: it tests nothing"
        normal = [j.job_id for j in before + after]
        ledger.wait_until(lambda led: led.has_result(normal) and all(led.of(j) for j in placed), 120,
                          "every normal job's result and every poison record's outcome", on_tick=fleet.assert_alive)
        last_normal_s = max(s.read_at for j in normal for s in ledger.of(j, "result")) - enqueued_at
        alive_after_poison = fleet.alive()
        producer.enqueue_batch(last)
        ledger.wait_until(lambda led: led.has_result(j.job_id for j in last), 60, "results of the last batch",
                          on_tick=fleet.assert_alive)
        ledger.settle_quietly()
        exits = fleet.stop()
    finally:
        fleet.kill_all()
        ledger.close()
    retried_keys = {m.key().decode() for m in read_topic(conn, names.retry, idle_s=1.0)}

    print(f"\n[chaos poison] normal jobs {len(normal) + len(last)}, poison records {len(placed)}; last normal result "
          f"{last_normal_s:.1f}s after enqueueing began; workers alive after the poison: {alive_after_poison}; "
          f"exit codes on SIGTERM: {exits}")
    for job_id, (fault, partition, _) in placed.items():
        [seen] = ledger.of(job_id) or [None]
        if seen is None:
            print(f"[chaos poison] {fault.name:<24} p{partition}: NO OUTCOME")
        elif seen.kind == "result":
            r = seen.result
            print(f"[chaos poison] {fault.name:<24} p{partition} at {seen.read_at - enqueued_at:4.1f}s: result, "
                  f"attempts {r.attempts}, handler calls {r.handler_calls}")
        else:
            letter = seen.letter
            print(f"[chaos poison] {fault.name:<24} p{partition} at {seen.read_at - enqueued_at:4.1f}s: {seen.kind} "
                  f"{letter.category} {letter.error_class}, attempts {letter.attempts}, {letter.error_message[:60]!r}")
    figures = ledger.figures([*normal, *(j.job_id for j in last), *placed])
    print(f"[chaos poison] {figures.line()} dead letters {ledger.count('dlq')} parked {ledger.count('parked')}")

    assert not figures.lost and not figures.duplicated and not figures.unexpected, figures.line()
    for job_id in [*normal, *(j.job_id for j in last)]:
        [seen] = ledger.of(job_id)
        assert seen.kind == "result"
    for job_id, (fault, _, job) in placed.items():
        [seen] = ledger.of(job_id)
        assert seen.kind == fault.fate, f"{fault.name}: {seen.kind} instead of {fault.fate}"
        if fault.fate == "result":
            assert (seen.result.handler_calls, seen.result.attempts) == (fault.handler_calls, fault.attempts), fault
            continue
        letter = seen.letter
        assert (letter.category, letter.error_class, letter.attempts) == (
            fault.category, fault.error_class, fault.attempts), f"{fault.name}: {letter}"
        assert h.VALUE_TRUNCATED not in seen.headers
        if fault.handler_calls:
            assert seen.headers[h.HANDLER_CALLS] == str(fault.handler_calls).encode(), fault.name
        if job_id == oversize_id:
            assert letter.error_message.startswith("oversize") and letter.value == oversize_value
        elif job_id == header_id:
            assert "undecodable_headers" in letter.error_message and letter.value == header_value
        else:
            assert letter.value == job.to_bytes()
    rate_limited = next(j for j, (f, _, _) in placed.items() if f.name == "one-day Retry-After")
    assert ledger.of(rate_limited)[0].headers[h.RETRY_AFTER_REQUESTED] == b"86400"
    assert rate_limited not in retried_keys, "the one-day Retry-After was held on the retry topic"
    # The hung job's partition flowed: its other jobs' results were committed before the hung job's dead letter.
    hung = next(j for j, (f, _, _) in placed.items() if f.name == "hung handler")
    hung_partition = placed[hung][1]
    hung_letter_ts = ledger.of(hung)[0].message.timestamp()[1]
    neighbours = [d.job_id for d in sent if d.partition == hung_partition]
    assert neighbours, "no normal job shared the hung job's partition"
    assert all(ledger.of(j)[0].message.timestamp()[1] < hung_letter_ts for j in neighbours)
    assert all(alive_after_poison.values()), f"a worker died on the poison: {alive_after_poison}"
    assert exits == dict.fromkeys(exits, 0), f"SIGTERM is a clean stop: {exits}"
