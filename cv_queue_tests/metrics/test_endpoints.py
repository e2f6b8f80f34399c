"""Each metrics endpoint scraped over HTTP after a known workload: two real `cv-queue worker` processes and one
`cv-queue dlq replay`, each with `--metrics-port 0`.

The workload: 100 jobs and 5 records that are not jobs, over 4 partitions (two slots). 80 jobs succeed at once,
10 fail once (transient:1; in-process retries are off, so each goes through the retry topic and then succeeds),
5 fail permanently. So: succeeded 90, retried {transient: 10}, dead-lettered {permanent: 5, invalid_payload: 5},
105 handler calls, 105 main-topic and 10 retry-topic records consumed.
"""

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer

from cv_queue.cli.queue_cmd import INVALID_SAMPLES
from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer, RawRecord
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.kafka.procs import spawn_worker
from cv_queue_tests.metrics.dashboards import dashboard_metric_names, rule_metric_names
from cv_queue_tests.metrics.scrape import Scrape, metrics_url, scrape, total, total_by
from cv_queue_tests.support import read_topic, unique, wait_for

FINE, TRANSIENT, PERMANENT, INVALID = 80, 10, 5, 5
LATENCY_S = 0.02  # every handler call sleeps this long first, failing or not
WORKER_ENV = {
    "CVQ_TOPICS__PARTITIONS": "4",
    "CVQ_RETRY__INPROCESS_TRIES": "1",  # a transient failure goes through the retry topic at once
    "CVQ_RETRY__BASE_DELAY_MS": "200",
}


@dataclass
class Run:
    settings: QueueSettings
    scrapes: list[Scrape]
    logs: list[Path]


def _labels() -> dict[int, dict[str, str]]:
    labels = {i: {"simulate": "transient:1"} for i in range(FINE, FINE + TRANSIENT)}
    labels.update({i: {"simulate": "permanent"} for i in range(FINE + TRANSIENT, FINE + TRANSIENT + PERMANENT)})
    return labels


def _settled(url: str) -> bool:
    """Everything committed and nothing held: the gauges a worker refreshes about once a second."""
    now = scrape(url)
    return all(now.value(name) == 0 for name in
               ("cvq_consumer_lag", "cvq_held_bytes", "cvq_jobs_in_flight", "cvq_jobs_buffered", "cvq_retries_waiting"))


def _stop(procs: list[subprocess.Popen]) -> list[int]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(60))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait(10))
    return codes


@pytest.fixture(scope="module")
def conn(bootstrap: str) -> KafkaConnection:
    return KafkaConnection(bootstrap_servers=bootstrap)


@pytest.fixture(scope="module")
def worker_run(conn: KafkaConnection, tmp_path_factory: pytest.TempPathFactory) -> Run:
    settings = QueueSettings(namespace=unique("m"), topics={"partitions": 4, "partitions_per_worker": 2})
    provision(admin_client(conn), topic_specs(settings))
    folder = tmp_path_factory.mktemp("metrics-workers")
    logs = [folder / f"{slot.name}.log" for slot in settings.slots()]
    procs = [spawn_worker(settings, slot.name, log, latency_ms=LATENCY_S * 1000, extra_env=WORKER_ENV,
                          extra_args=["--metrics-port", "0"]) for slot, log in zip(settings.slots(), logs, strict=True)]
    try:
        wait_for(lambda: all(metrics_url(log) for log in logs), 60, "both workers to serve metrics")
        wait_for(lambda: all("started on" in log.read_text() for log in logs), 60, "both workers to start")
        urls = [metrics_url(log) for log in logs]
        producer = JobProducer(conn, settings.topic_names.main)
        producer.enqueue_batch(sample_jobs(FINE + TRANSIENT + PERMANENT, seed=10, labels_for=_labels()))
        producer.send_raw([RawRecord(key=f"invalid-{i}".encode(), value=INVALID_SAMPLES[i][1]) for i in range(INVALID)])
        results = read_topic(conn, settings.topic_names.results, expect=FINE + TRANSIENT, timeout_s=120)
        letters = read_topic(conn, settings.topic_names.dlq, expect=PERMANENT + INVALID, timeout_s=60)
        assert (len(results), len(letters)) == (FINE + TRANSIENT, PERMANENT + INVALID)
        for url in urls:
            wait_for(lambda url=url: _settled(url), 60, f"{url} to show everything committed")
        # The DLQ depth gauges are read every 10 s, apart from the jobs.
        wait_for(lambda: all(scrape(u).value("cvq_dlq_depth", category="permanent") >= PERMANENT for u in urls),
                 60, "the DLQ depth gauges to count the permanent letters")
        scrapes = [scrape(url) for url in urls]
    finally:
        codes = _stop(procs)
    assert codes == [0, 0], f"workers exited {codes}; see {logs}"
    return Run(settings, scrapes, logs)


def test_worker_endpoints_count_the_outcomes_by_category(worker_run: Run):
    scrapes = worker_run.scrapes
    assert {s.by("cvq_worker_running", "slot").popitem()[0] for s in scrapes} == {"0-1", "2-3"}
    assert total(scrapes, "cvq_worker_running") == 2
    assert total(scrapes, "cvq_jobs_succeeded_total") == FINE + TRANSIENT
    retried = {k: v for k, v in total_by(scrapes, "cvq_jobs_retried_total", "category").items() if v}
    assert retried == {"transient": TRANSIENT}
    dead = {k: v for k, v in total_by(scrapes, "cvq_jobs_dead_lettered_total", "category").items() if v}
    assert dead == {"permanent": PERMANENT, "invalid_payload": INVALID}
    consumed = total_by(scrapes, "cvq_records_consumed_total", "topic")
    names = worker_run.settings.topic_names
    assert consumed == {names.main: FINE + TRANSIENT + PERMANENT + INVALID, names.interactive: 0,
                        names.retry: TRANSIENT}
    assert total(scrapes, "cvq_jobs_timed_out_total") == 0
    # Every slot did work, so each one's own counts are real (not one process's figures read twice).
    for s in scrapes:
        assert 0 < s.value("cvq_jobs_succeeded_total") < FINE + TRANSIENT


def test_worker_histograms_match_the_counts(worker_run: Run):
    scrapes = worker_run.scrapes
    deliveries = FINE + 2 * TRANSIENT + PERMANENT
    assert total(scrapes, "cvq_handler_calls_total") == deliveries
    assert total(scrapes, "cvq_handler_duration_seconds_count") == deliveries
    assert total(scrapes, "cvq_handler_duration_seconds_sum") >= deliveries * LATENCY_S
    assert total(scrapes, "cvq_handler_duration_seconds_bucket", le="0.01") == 0  # each call slept 20 ms
    assert total(scrapes, "cvq_handler_duration_seconds_bucket", le="+Inf") == deliveries
    succeeded = total(scrapes, "cvq_jobs_succeeded_total")
    assert total(scrapes, "cvq_job_latency_seconds_count") == succeeded
    assert total(scrapes, "cvq_job_latency_seconds_sum") >= succeeded * LATENCY_S
    assert total(scrapes, "cvq_job_latency_seconds_bucket", le="600.0") == succeeded
    for s in scrapes:
        commits = s.value("cvq_transactions_committed_total")
        assert commits > 0
        assert s.value("cvq_transaction_commit_duration_seconds_count") == commits
    assert total(scrapes, "cvq_transactions_aborted_total") == 0


def test_worker_gauges_show_the_settled_queue_and_the_dlq(worker_run: Run):
    scrapes = worker_run.scrapes
    names = worker_run.settings.topic_names
    for s in scrapes:
        # Each worker reports its own four source partitions (two of each topic), all caught up.
        lag = s.by("cvq_consumer_lag", "partition", topic=names.main)
        assert len(lag) == 2 and set(lag.values()) == {0}
        assert len(s.by("cvq_consumer_lag", "partition", topic=names.retry)) == 2
        assert s.value("cvq_partition_paused") == 0
        assert s.value("cvq_abandoned_handler_threads") == 0
        depth = s.by("cvq_dlq_depth", "category")
        # Offsets, so letters plus at most one transaction marker per letter.
        assert PERMANENT <= depth["permanent"] <= 2 * PERMANENT
        assert INVALID <= depth["invalid_payload"] <= 2 * INVALID
        assert depth["transient"] == depth["rate_limited"] == 0
        assert s.value("cvq_parked_depth") == 0


def _replay(settings: QueueSettings, folder: Path, *args: str) -> subprocess.Popen:
    out = (folder / "replay.out").open("wb")
    err = (folder / "replay.log").open("wb")
    env = {**os.environ, "CVQ_NAMESPACE": settings.namespace, "CVQ_TOPICS__PARTITIONS": "4"}
    try:
        return subprocess.Popen([CV_QUEUE, "dlq", "replay", *args], env=env, stdout=out, stderr=err)
    finally:
        out.close()
        err.close()


@pytest.fixture(scope="module")
def replay_run(worker_run: Run, conn: KafkaConnection, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The permanent letters replayed, and one undecodable record in the transient partition parked."""
    settings = worker_run.settings
    raw = Producer(conn.client_config())
    raw.produce(settings.topic_names.dlq, value=b"not a dead letter", key=b"junk",
                partition=settings.dlq_partition(ErrorCategory.TRANSIENT, None))
    assert raw.flush(30) == 0
    folder = tmp_path_factory.mktemp("metrics-replay")
    proc = _replay(settings, folder, "--category", "permanent", "--category", "transient", "--metrics-port", "0",
                   "--metrics-linger", "120")
    try:
        wait_for(lambda: "replayed" in (folder / "replay.out").read_text() or proc.poll() is not None, 120,
                 "the replay to report")
        assert proc.poll() is None, f"replay exited {proc.returncode}: {(folder / 'replay.log').read_text()}"
        url = metrics_url(folder / "replay.log")
        assert url is not None
        result = scrape(url)
    finally:
        codes = _stop([proc])
    assert codes == [0]  # lingering until stopped: a stop during the linger still ends the command well
    assert f"replayed {PERMANENT}, parked 1" in (folder / "replay.out").read_text()
    return Run(settings, [result], [folder / "replay.log"])


def test_replay_endpoint_counts_replayed_and_parked_letters_and_the_depth_left(replay_run: Run):
    (s,) = replay_run.scrapes
    assert {k: v for k, v in s.by("cvq_dlq_replayed_total", "category").items() if v} == {"permanent": PERMANENT}
    assert {k: v for k, v in s.by("cvq_dlq_parked_total", "category").items() if v} == {"transient": 1}
    depth = s.by("cvq_dlq_depth", "category")
    assert depth["permanent"] == depth["transient"] == 0  # read to the end and committed past the last marker
    assert INVALID <= depth["invalid_payload"] <= 2 * INVALID  # not asked for: left alone
    assert 1 <= s.value("cvq_parked_depth") <= 2  # the parked record and its transaction's marker


def test_every_metric_of_the_dashboard_and_the_alerts_is_served(worker_run: Run, replay_run: Run):
    served = set().union(*(s.declared for s in [*worker_run.scrapes, *replay_run.scrapes]))
    assert dashboard_metric_names() - served == set()
    assert rule_metric_names() - served == set()
    # ...and the figures the dashboard plots have data after this workload (LLM tokens need an LLM handler).
    with_samples = {x.name for s in [*worker_run.scrapes, *replay_run.scrapes] for x in s.samples}
    assert dashboard_metric_names() - with_samples <= {"cvq_llm_tokens_total", "cvq_llm_requests_total"}
