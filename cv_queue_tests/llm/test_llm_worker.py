"""The LLM evaluator in real worker processes, over Kafka and HTTP: the local OpenAI-protocol server stands in for the
paid API. Exactly-once results carry the model usage; 429s, 5xx and malformed answers take their routes."""

import json
from collections import Counter

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue.llm_server import server_process
from cv_queue.messages import EvaluationJob, EvaluationResult
from cv_queue_tests.kafka.procs import spawn_worker
from cv_queue_tests.support import read_topic, wait_for


def _with_directive(job: EvaluationJob, directive: str) -> EvaluationJob:
    return job.model_copy(update={"cv_text": f"{job.cv_text} [[llm:{directive}]]"})


def test_llm_jobs_through_four_workers_over_http(conn, provisioned, tmp_path):
    settings = provisioned
    normal = list(sample_jobs(400, seed=61, prefix="llm"))
    special = {
        "rate_limited": _with_directive(next(iter(sample_jobs(1, seed=62, prefix="r429"))), "429:retry-after=1"),
        "server_error": _with_directive(next(iter(sample_jobs(1, seed=63, prefix="r500"))), "500"),
        "repaired": _with_directive(next(iter(sample_jobs(1, seed=64, prefix="rmal"))), "malformed-once"),
    }
    env = {
        "CVQ_WORKER__HANDLER": "cv_queue.evaluation.llm:LLMEvaluator",
        "CVQ_WORKER__HANDLER_OPTIONS": "{}",
        "CVQ_WORKER__MAX_IN_FLIGHT": "200",
        "CVQ_LLM__API_KEY": "local-test-key",
        "CVQ_LLM__MODEL": "local-model",
        "CVQ_RETRY__MAX_ATTEMPTS": "2",
        "CVQ_RETRY__BASE_DELAY_MS": "200",
        "CVQ_RETRY__INPROCESS_TRIES": "1",
        # The always-429 job is refused until its budget runs out: several throttles, none of them an attempt.
        "CVQ_RETRY__RATE_LIMIT_BUDGET_S": "4",
    }
    with server_process("--latency-ms", "500") as server:
        env["CVQ_LLM__BASE_URL"] = server.base_url
        logs = [tmp_path / f"w{i}.log" for i in range(4)]
        workers = [spawn_worker(settings, slot.name, log, extra_env=env)
                   for slot, log in zip(settings.slots(), logs, strict=True)]
        try:
            JobProducer(conn, settings.topic_names.main).enqueue_batch([*normal, *special.values()])
            wait_for(lambda: len(read_topic(conn, settings.topic_names.results, idle_s=0.3)) >= len(normal) + 1,
                     120, "every good job's result")
            wait_for(lambda: len(read_topic(conn, settings.topic_names.dlq, idle_s=0.3)) >= 2, 60,
                     "the 429 and 500 jobs' dead letters")
            stats = server.stats()
        finally:
            for worker in workers:
                worker.terminate()
            codes = [worker.wait(60) for worker in workers]
    assert codes == [0, 0, 0, 0], [log.read_text()[-2000:] for log in logs]
    results = [EvaluationResult.model_validate_json(m.value()) for m in
               read_topic(conn, settings.topic_names.results, idle_s=1.0)]
    per_job = Counter(r.job_id for r in results)
    assert set(per_job) == {j.job_id for j in normal} | {special["repaired"].job_id}
    assert max(per_job.values()) == 1
    assert all(r.usage is not None and r.usage.model == "local-model" and r.usage.prompt_version == "v1"
               and r.usage.total_tokens > 0 for r in results)
    repaired = next(r for r in results if r.job_id == special["repaired"].job_id)
    assert repaired.usage is not None and repaired.usage.calls == 2
    dlq = read_topic(conn, settings.topic_names.dlq, idle_s=1.0)
    letters = {m.key().decode(): read_dead_letter(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                                  m.headers())
               for m in dlq}
    throttles = {m.key().decode(): int(dict(m.headers() or []).get(h.THROTTLES, b"0")) for m in dlq}
    assert set(letters) == {special["rate_limited"].job_id, special["server_error"].job_id}
    assert letters[special["rate_limited"].job_id].category == ErrorCategory.RATE_LIMITED
    assert letters[special["server_error"].job_id].category == ErrorCategory.TRANSIENT
    assert letters[special["server_error"].job_id].attempts == 2
    # max_attempts is 2, yet the throttled job was refused at least three times (every second, for 4 s).
    assert (letters[special["rate_limited"].job_id].attempts, throttles[special["server_error"].job_id]) == (0, 0)
    assert throttles[special["rate_limited"].job_id] >= 3, throttles
    # Async: far more calls in flight at once than the 32 threads a thread handler would have.
    assert stats["max_in_flight"] > 100, json.dumps(stats)[:500]
    assert "local-test-key" not in "".join(log.read_text() for log in logs)
