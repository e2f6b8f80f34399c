"""Async and inline handlers through the real worker: many jobs in flight on one event loop, or every job on the
poll thread, with the same guarantees as thread handlers (exactly-once output, per-key order, the watermark, the
job timeout where one can apply)."""

import threading
from collections import Counter

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import AsyncSimulatedLLM, NoopHandler
from cv_queue.kafka.admin.lag import group_lag
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue.kafka.worker.execution import JOB_TIMEOUT_CLASS
from cv_queue.messages import EvaluationResult
from cv_queue_tests.support import read_topic, running_workers, tuned, wait_for


def test_an_async_handler_runs_hundreds_of_jobs_at_once_exactly_once(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 300, "progress_interval_s": 1.0})
    jobs = list(sample_jobs(1200, seed=31))
    JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
    handler = AsyncSimulatedLLM(latency_ms=1000)  # a 1 s "LLM call" each: threads would need 1,200 of them
    peak = {"threads": 0}
    with running_workers(conn, settings, handler=handler) as workers:
        def loop_threads() -> bool:
            peak["threads"] = max(peak["threads"], threading.active_count())
            return len(read_topic(conn, settings.topic_names.results, idle_s=0.3)) >= len(jobs)
        wait_for(loop_threads, 120, "every job's result")
        wait_for(lambda: all(x.lag == 0 for x in group_lag(admin_client(conn), settings.group_id,
                                                             settings.topic_names.main)), 30, "committed offsets")
        stats = [w.join() for w in workers]
    results = read_topic(conn, settings.topic_names.results, idle_s=1.0)
    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == {j.job_id for j in jobs} and max(per_job.values()) == 1
    decoded = [EvaluationResult.model_validate_json(m.value()) for m in results]
    assert all(r.attempts == 1 and r.handler_calls == 1 for r in decoded)
    assert sum(s.succeeded for s in stats) == len(jobs)
    # One event loop thread per worker, not one thread per job in flight.
    assert peak["threads"] < 100, f"{peak['threads']} threads alive at the peak"


def test_async_jobs_of_one_key_run_in_order_and_a_hung_one_is_cancelled(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 50, "job_timeout_s": 3.0}, retry={"max_attempts": 1})
    producer = JobProducer(conn, settings.topic_names.main)
    hung = producer.enqueue(next(iter(sample_jobs(1, seed=41, prefix="hung",
                                                  labels_for={0: {"simulate": "sleep:3600000"}}))))
    # Five copies of one job id: one key, so they must run one at a time, in offset order.
    template = next(iter(sample_jobs(1, seed=42, prefix="same")))
    same = [producer.enqueue(template.model_copy(update={"request_id": f"req-{i}"})) for i in range(5)]
    others = producer.enqueue_batch(sample_jobs(200, seed=43))
    handler = AsyncSimulatedLLM(latency_ms=50)
    with running_workers(conn, settings, handler=handler):
        expected = len(others) + len(same)
        wait_for(lambda: len(read_topic(conn, settings.topic_names.results, idle_s=0.3)) >= expected, 60,
                 "every result")
        letters: list = []
        wait_for(lambda: letters.extend(read_topic(conn, settings.topic_names.dlq, idle_s=0.3)) or letters, 30,
                 "the hung job's dead letter")
    results = read_topic(conn, settings.topic_names.results, idle_s=1.0)
    decoded = [EvaluationResult.model_validate_json(m.value()) for m in results]
    same_order = [r.request_id for r in decoded if r.job_id == template.job_id]
    assert same_order == [f"req-{i}" for i in range(5)], "one key's jobs ran out of offset order"
    assert len(decoded) == len({(r.job_id, r.request_id) for r in decoded}) == len(others) + 5
    letter = read_dead_letter(letters[0].topic(), letters[0].partition(), letters[0].offset(), letters[0].key(),
                              letters[0].value(), letters[0].headers())
    assert letter.error_class == JOB_TIMEOUT_CLASS and letter.original_partition == hung.partition
    assert len(letters) == 1 and {d.partition for d in same} == {same[0].partition}


def test_an_inline_handler_runs_on_the_poll_thread_exactly_once(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 4})
    jobs = list(sample_jobs(2000, seed=51))
    JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
    before = {t.ident for t in threading.enumerate()}  # other tests may leave abandoned handler threads behind
    with running_workers(conn, settings, handler=NoopHandler()) as workers:
        wait_for(lambda: len(read_topic(conn, settings.topic_names.results, idle_s=0.3)) >= len(jobs), 60,
                 "every job's result")
        handler_threads = [t.name for t in threading.enumerate()
                           if t.name.startswith("cvq-handler-") and t.ident not in before]
        stats = [w.join() for w in workers]
    assert handler_threads == [], "an inline handler needs no handler threads"
    results = read_topic(conn, settings.topic_names.results, idle_s=1.0)
    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == {j.job_id for j in jobs} and max(per_job.values()) == 1
    assert sum(s.succeeded for s in stats) == len(jobs)
