"""Interactive before bulk: jobs enqueued in the interactive lane, behind a bulk backlog that the provider's budget
holds back, are served first by the same worker, exactly once, over the same transactional path."""

import json

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.lanes import Lane
from cv_queue.messages import EvaluationResult
from cv_queue.settings import QueueSettings, TopicSettings
from cv_queue_tests.cli.test_cli import cli
from cv_queue_tests.kafka.procs import spawn_worker, stop_all
from cv_queue_tests.llm.test_quota_fleet import MODEL, _env
from cv_queue_tests.support import read_topic, results_by_job, unique, wait_for


def test_interactive_jobs_overtake_a_bulk_backlog_held_by_the_budget(conn, tmp_path, start_llm_server):
    # One slot of two partitions: one worker serves both lanes.
    settings = QueueSettings(namespace=unique("lanes"), topics=TopicSettings(partitions=2, partitions_per_worker=2))
    provision(admin_client(conn), topic_specs(settings))
    server = start_llm_server(latency_ms=50)
    rpm = 300  # five calls a second: the bulk backlog takes about 18 s
    env = _env(server, CVQ_TOPICS__PARTITIONS="2", CVQ_TOPICS__PARTITIONS_PER_WORKER="2",
               CVQ_LLM__RATE_LIMITS=json.dumps({MODEL: {"requests_per_minute": rpm}}))
    bulk = list(sample_jobs(90, seed=181, prefix="bulk"))
    interactive = list(sample_jobs(8, seed=182, prefix="urgent"))
    worker = spawn_worker(settings, "0-1", tmp_path / "worker.log", extra_env=env)
    try:
        JobProducer.for_lane(conn, settings).enqueue_batch(bulk)
        wait_for(lambda: len(results_by_job(conn, settings, idle_s=0.2)) >= 10, 60, "the bulk backlog to start")
        JobProducer.for_lane(conn, settings, Lane.INTERACTIVE).enqueue_batch(interactive)
        wanted = {j.job_id for j in interactive}
        wait_for(lambda: wanted <= set(results_by_job(conn, settings, idle_s=0.2)), 60, "the interactive results")
        done_then = set(results_by_job(conn, settings, idle_s=0.2))
        every = {j.job_id for j in [*bulk, *interactive]}
        wait_for(lambda: every <= set(results_by_job(conn, settings, idle_s=0.3)), 120, "every result",
                 interval_s=2)
    finally:
        stop_all(worker)
    bulk_left = len({j.job_id for j in bulk} - done_then)
    print(f"bulk jobs still waiting when the last interactive one was done: {bulk_left} of {len(bulk)}")
    # At five calls a second, the interactive jobs' own calls take under two seconds: the backlog barely moved.
    assert bulk_left >= 45, bulk_left
    results = results_by_job(conn, settings, idle_s=1.0)
    assert set(results) == every and max(results.values()) == 1
    assert all(r.usage is not None for r in (EvaluationResult.model_validate_json(m.value()) for m in
                                              read_topic(conn, settings.topic_names.results, idle_s=0.3)))


def test_enqueue_lane_interactive_writes_to_the_lane_topic(conn, provisioned):
    settings = provisioned
    done = cli("--namespace", settings.namespace, "enqueue", "--count", "3", "--lane", "interactive")
    assert done.returncode == 0, done.stderr
    assert settings.topic_names.interactive in done.stdout
    assert len(read_topic(conn, settings.topic_names.interactive, expect=3)) == 3
    assert read_topic(conn, settings.topic_names.main, idle_s=0.3) == []
    refused = cli("--namespace", settings.namespace, "enqueue", "--count", "1", "--lane", "urgent")
    assert refused.returncode == 2 and "invalid choice: 'urgent'" in refused.stderr
