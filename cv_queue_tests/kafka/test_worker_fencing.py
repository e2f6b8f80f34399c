"""A second worker for the same slot fences the first, which exits cleanly; output stays exactly once."""

import signal
from collections import Counter

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client.producer import JobProducer
from cv_queue_tests.kafka.procs import spawn_worker, started
from cv_queue_tests.support import read_topic, wait_for


def test_second_worker_fences_the_first(conn, provisioned, tmp_path):
    settings = provisioned
    slot = settings.slots()[0]
    producer = JobProducer(conn, settings.topic_names.main)
    first = spawn_worker(settings, slot.name, tmp_path / "first.log", latency_ms=5)
    second = None
    try:
        wait_for(lambda: started(tmp_path / "first.log"), 60, "the first worker to start")
        producer.enqueue_batch(sample_jobs(100, seed=1, prefix="before"))
        second = spawn_worker(settings, slot.name, tmp_path / "second.log", latency_ms=5)
        wait_for(lambda: started(tmp_path / "second.log"), 60, "the second worker to start")
        jobs = list(sample_jobs(200, seed=2, prefix="after"))
        deliveries = producer.enqueue_batch(jobs)
        assert any(d.partition in slot.partitions for d in deliveries)
        assert first.wait(60) == 3  # fenced: exits on its own, with the fenced exit code
        log = (tmp_path / "first.log").read_text()
        assert "fenced" in log and "Traceback" not in log
        expected = {m.key() for m in read_topic(conn, settings.topic_names.main, expect=300)
                    if m.partition() in slot.partitions}
        wait_for(lambda: {m.key() for m in read_topic(conn, settings.topic_names.results, idle_s=0.5)} == expected,
                 60, "every job of the slot to have a result")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    results = read_topic(conn, settings.topic_names.results, idle_s=1.0)
    assert max(Counter(m.key() for m in results).values()) == 1
    assert second is not None and second.returncode == 0
