"""2,000 jobs through 4 partition-pair workers: exactly one committed result per job, offsets committed;
each slot serves exactly its own partitions, and a slot that overlaps another is refused."""

from collections import Counter

import pytest

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.admin.lag import committed_offsets, group_lag
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.fleet.join import WorkerStartError
from cv_queue.messages import EvaluationResult
from cv_queue.settings import Slot
from cv_queue_tests.support import read_topic, running_workers, start_worker, tuned, wait_for


def _slot_name(worker: str) -> str:
    """The slot in a result's `worker` field (host:pid:slot)."""
    return worker.rsplit(":", 1)[-1]


def test_two_thousand_jobs_four_workers_exactly_once(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 16, "progress_interval_s": 1.0})
    jobs = list(sample_jobs(2000, seed=42))
    enqueued_to = {d.job_id: d.partition for d in JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)}
    handler = SimulatedLLM(latency_ms=2)
    with running_workers(conn, settings, handler=handler) as workers:
        results = read_topic(conn, settings.topic_names.results, expect=2000, timeout_s=120)
        admin = admin_client(conn)
        wait_for(lambda: sum(x.lag for x in group_lag(admin, settings.group_id, settings.topic_names.main)) == 0,
                 30, "worker offsets to be committed to the end of the main topic")
        stats = [w.join() for w in workers]

    per_job = Counter(m.key().decode() for m in results)
    assert len(results) == 2000
    assert set(per_job) == {j.job_id for j in jobs}
    assert max(per_job.values()) == 1
    decoded = [EvaluationResult.model_validate_json(m.value()) for m in results]
    assert all(r.attempts == 1 and r.handler_calls == 1 for r in decoded)
    # Each slot served exactly its own partitions: every result came from a job enqueued to one of the
    # partitions of the slot that produced it, and every partition's jobs were served.
    slots = {slot.name: slot.partitions for slot in settings.slots()}
    served: dict[str, set[int]] = {}
    for r in decoded:
        served.setdefault(_slot_name(r.worker), set()).add(enqueued_to[r.job_id])
    assert served == {name: set(partitions) for name, partitions in slots.items()}
    assert sum(s.succeeded for s in stats) == 2000
    assert all(s.stop_reason == "stopped" and s.commits > 0 for s in stats)
    committed = group_lag(admin_client(conn), settings.group_id, settings.topic_names.main)
    assert all(x.committed == x.end_offset for x in committed)


def test_a_restarted_worker_resumes_from_committed_offsets(conn, provisioned):
    settings = provisioned
    producer = JobProducer(conn, settings.topic_names.main)
    deliveries = producer.enqueue_batch(sample_jobs(200, seed=5))
    slot = settings.slots()[0]
    mine = [d for d in deliveries if d.partition in slot.partitions]
    first = start_worker(conn, settings, slot, handler=SimulatedLLM(latency_ms=0))
    wait_for(lambda: len(read_topic(conn, settings.topic_names.results, idle_s=0.5)) == len(mine), 60,
             "the slot's results")
    first.join()

    second = start_worker(conn, settings, slot, handler=SimulatedLLM(latency_ms=0))
    late = next(d for d in (producer.enqueue(j) for j in sample_jobs(50, seed=6, prefix="late"))
                if d.partition in slot.partitions)
    wait_for(lambda: late.job_id.encode() in {m.key() for m in read_topic(conn, settings.topic_names.results,
                                                                           idle_s=0.5)}, 60, "the late job")
    stats = second.join()
    assert stats.consumed == 1  # only the new job: the first run's offsets were committed
    results = read_topic(conn, settings.topic_names.results, idle_s=1.0)
    assert len(results) == len(mine) + 1 == len({m.key() for m in results})


@pytest.mark.parametrize("partitions", [(1, 2), (0,), (0, 1, 2)])
def test_a_slot_that_overlaps_the_fleet_is_refused(conn, provisioned, partitions):
    """Slots are fenced only by their own transactional id, so "1-2" beside "0-1" and "2-3" would run
    partitions 1 and 2 twice: such a worker must not start, and must not consume or commit anything."""
    settings = provisioned
    deliveries = JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(40, seed=7, prefix="ovl"))
    assert {d.partition for d in deliveries} & set(partitions)  # there was work it could have taken
    with pytest.raises(WorkerStartError):
        # Refused when built or when run: join() re-raises what run() raised.
        start_worker(conn, settings, Slot(partitions=partitions), handler=SimulatedLLM(latency_ms=0)).join()
    assert read_topic(conn, settings.topic_names.results, idle_s=1.0) == []
    committed = committed_offsets(admin_client(conn), settings.group_id, settings.topic_names.main,
                                  list(range(settings.topics.partitions)))
    assert all(offset is None for offset in committed.values())
