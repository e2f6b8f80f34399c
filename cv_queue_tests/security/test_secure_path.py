"""The whole path over SASL_SSL with three least-privilege principals: cvq-producer enqueues, `cv-queue worker`
processes run as cvq-worker, `cv-queue dlq replay` runs as cvq-replayer. Results, a retry through the retry topic,
a dead letter and a replay, each exactly once (read read_committed, by job id)."""

import json
import subprocess
from collections import Counter

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.acls import ADMIN, PRODUCER, REPLAYER, WORKER
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.settings import QueueSettings, TopicSettings
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.kafka.procs import started
from cv_queue_tests.security.conftest import apply_acls_as_admin
from cv_queue_tests.support import read_topic, unique, wait_for

JOBS = 30
# One slot of two partitions keeps this to one worker process on a 2-core box; one handler try per delivery and
# two deliveries make a retry go through the retry topic and an outage end in the DLQ, quickly.
ENV = {
    "CVQ_TOPICS__PARTITIONS": "2",
    "CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
    "CVQ_WORKER__HANDLER_OPTIONS": json.dumps({"latency_ms": 0}),
    "CVQ_WORKER__PROGRESS_INTERVAL_S": "1",
    "CVQ_RETRY__INPROCESS_TRIES": "1",
    "CVQ_RETRY__MAX_ATTEMPTS": "2",
    "CVQ_RETRY__BASE_DELAY_MS": "200",
}


def test_enqueue_work_retry_dead_letter_and_replay_over_sasl_ssl(secure_cluster, tmp_path):
    settings = QueueSettings(namespace=unique("p"), topics=TopicSettings(partitions=2))
    names = settings.topic_names
    provision(admin_client(secure_cluster.connection(ADMIN)), topic_specs(settings))
    apply_acls_as_admin(secure_cluster, settings.namespace)

    labels = {0: {"simulate": "transient:1"}, 1: {"simulate": "permanent"}, 2: {"simulate": "transient-until-replay"}}
    jobs = list(sample_jobs(JOBS, seed=11, prefix=unique("sec"), labels_for=labels))
    retried, dead, replayed = jobs[0].job_id, jobs[1].job_id, jobs[2].job_id
    JobProducer(secure_cluster.connection(PRODUCER), names.main).enqueue_batch(jobs)

    log = tmp_path / "worker.log"
    env = secure_cluster.env(WORKER, CVQ_NAMESPACE=settings.namespace, **ENV)
    with log.open("ab") as out:
        worker = subprocess.Popen([CV_QUEUE, "worker", "--partitions", "0,1"], env=env, stdout=out, stderr=out,
                                  start_new_session=True)
    try:
        wait_for(lambda: started(log) or worker.poll() is not None, 60, "the worker to start")
        assert worker.poll() is None, log.read_text()[-3000:]
        admin = secure_cluster.connection(ADMIN)
        wait_for(lambda: len(read_topic(admin, names.dlq, idle_s=0.5)) >= 2, 90, "two dead letters")
        replay = subprocess.run([CV_QUEUE, "dlq", "replay", "--category", "transient"],
                                env=secure_cluster.env(REPLAYER, CVQ_NAMESPACE=settings.namespace, **ENV),
                                capture_output=True, text=True, timeout=120, check=False)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        wait_for(lambda: len(read_topic(admin, names.results, idle_s=0.5)) >= JOBS - 1, 90, "every result")
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert worker.returncode == 0, log.read_text()[-3000:]

    results = Counter(m.key().decode() for m in read_topic(admin, names.results, idle_s=1.0))
    assert set(results) == {j.job_id for j in jobs} - {dead}
    assert max(results.values()) == 1  # exactly once, the retried and the replayed job included
    letters = Counter(m.key().decode() for m in read_topic(admin, names.dlq, idle_s=1.0))
    assert letters == {dead: 1, replayed: 1}
    retries = Counter(m.key().decode() for m in read_topic(admin, names.retry, idle_s=1.0))
    assert retries[retried] == 1
    output = log.read_text() + replay.stdout + replay.stderr
    for password in secure_cluster.passwords.values():
        assert password not in output
