"""Transient failures: in-process blips, retry-topic hops with correct attempts and delays, exhaustion."""

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue.kafka.worker.backoff import delay_bounds_ms
from cv_queue.messages import EvaluationResult
from cv_queue_tests.support import read_topic, running_workers, tuned

NO_INPROCESS = {"inprocess_tries": 1, "base_delay_ms": 400, "multiplier": 2.0, "jitter": 0.25,
                "max_attempts": 5}


def _one_job(conn, settings, directive: str):
    job = next(sample_jobs(1, seed=hash(directive) % 1000, labels_for={0: {"simulate": directive}}))
    JobProducer(conn, settings.topic_names.main).enqueue(job)
    return job


def test_two_transient_failures_through_the_retry_topic(conn, provisioned):
    settings = tuned(provisioned, retry=NO_INPROCESS)
    job = _one_job(conn, settings, "transient:2")
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        [msg] = read_topic(conn, settings.topic_names.results, expect=1, timeout_s=30)
    result = EvaluationResult.model_validate_json(msg.value())
    assert result.job_id == job.job_id
    assert (result.attempts, result.handler_calls) == (3, 3)

    hops = read_topic(conn, settings.topic_names.retry, expect=2)
    assert [h.read_int(m.headers(), h.ATTEMPTS, -1) for m in hops] == [1, 2]
    for attempt, hop in enumerate(hops, start=1):
        low, high = delay_bounds_ms(attempt, settings.retry)
        delay = h.read_int(hop.headers(), h.RETRY_DUE_AT, 0) - h.read_int(hop.headers(), h.FAILED_AT, 0)
        assert low - 1 <= delay <= high + 1, f"attempt {attempt}: delay {delay} outside [{low}, {high}]"
        assert h.read_str(hop.headers(), h.ERROR_CATEGORY) == "transient"
        assert hop.partition() == hops[0].partition()  # the retry partition numbered like the source
    last_due = h.read_int(hops[-1].headers(), h.RETRY_DUE_AT, 0)
    assert result.evaluated_at.timestamp() * 1000 >= last_due  # never processed before it was due
    assert not read_topic(conn, settings.topic_names.dlq, idle_s=0.5)


def test_short_blips_are_absorbed_in_process(conn, provisioned):
    job = _one_job(conn, provisioned, "transient:2")
    with running_workers(conn, provisioned, handler=SimulatedLLM(latency_ms=0)):
        [msg] = read_topic(conn, provisioned.topic_names.results, expect=1, timeout_s=30)
    result = EvaluationResult.model_validate_json(msg.value())
    assert (result.job_id, result.attempts, result.handler_calls) == (job.job_id, 1, 3)
    assert not read_topic(conn, provisioned.topic_names.retry, idle_s=0.5)


def test_rate_limit_retry_after_is_honoured(conn, provisioned):
    settings = tuned(provisioned, retry={**NO_INPROCESS, "base_delay_ms": 50})
    _one_job(conn, settings, "rate_limited:1:1.5")
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        [msg] = read_topic(conn, settings.topic_names.results, expect=1, timeout_s=30)
    [hop] = read_topic(conn, settings.topic_names.retry, expect=1)
    assert h.read_str(hop.headers(), h.ERROR_CATEGORY) == "rate_limited"
    assert h.read_int(hop.headers(), h.RETRY_DUE_AT, 0) - h.read_int(hop.headers(), h.FAILED_AT, 0) >= 1500
    assert h.read_int(hop.headers(), h.THROTTLES, 0) == 1
    # A throttle is not an attempt: the job's one counted delivery is the one that succeeded.
    assert EvaluationResult.model_validate_json(msg.value()).attempts == 1


def test_exhausted_retries_end_in_the_dlq(conn, provisioned):
    settings = tuned(provisioned, retry={**NO_INPROCESS, "base_delay_ms": 100, "max_attempts": 3})
    job = _one_job(conn, settings, "transient:1000")
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        [msg] = read_topic(conn, settings.topic_names.dlq, expect=1, timeout_s=30)
    letter = read_dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers())
    assert letter.key == job.key and letter.category == ErrorCategory.TRANSIENT
    assert letter.attempts == 3 and h.read_int(msg.headers(), h.HANDLER_CALLS, 0) == 3
    assert letter.original_topic == settings.topic_names.main  # provenance survives the retry hops
    assert msg.partition() == settings.dlq_partition(ErrorCategory.TRANSIENT, job.key)
    assert len(read_topic(conn, settings.topic_names.retry, expect=2)) == 2
    assert not read_topic(conn, settings.topic_names.results, idle_s=0.5)
