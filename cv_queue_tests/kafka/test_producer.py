"""Enqueue confirms delivery and says where each job landed; failures are classified."""

import pytest

from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client.producer import EnqueueError, JobProducer, RawRecord
from cv_queue.messages import decode_job
from cv_queue_tests.support import read_topic


def test_batch_enqueue_returns_partitions_and_offsets(conn, provisioned):
    jobs = list(sample_jobs(300, seed=11))
    producer = JobProducer(conn, provisioned.topic_names.main)
    deliveries = producer.enqueue_batch(jobs)
    assert [d.job_id for d in deliveries] == [j.job_id for j in jobs]
    assert len({(d.partition, d.offset) for d in deliveries}) == 300
    assert len({d.partition for d in deliveries}) == 8  # keyed by job_id, spread over the 8 partitions
    records = {(m.partition(), m.offset()): m for m in read_topic(conn, provisioned.topic_names.main, expect=300)}
    for job, d in zip(jobs, deliveries, strict=True):
        msg = records[(d.partition, d.offset)]
        assert msg.key() == job.job_id.encode()
        assert decode_job(msg.value(), msg.key()) == job
    again = producer.enqueue(jobs[0])
    assert again.partition == deliveries[0].partition  # same key, same partition


def test_undeliverable_record_raises_a_classified_error(conn, provisioned):
    producer = JobProducer(conn, provisioned.topic_names.main)
    ok = RawRecord(key=b"fine", value=b"{}", label="fine")
    huge = RawRecord(key=b"huge", value=b"x" * 3_000_000, label="huge")
    with pytest.raises(EnqueueError) as info:
        producer.send_raw([ok, huge])
    assert info.value.category == ErrorCategory.PERMANENT
    assert set(info.value.failures) == {"huge"}
    assert [d.job_id for d in info.value.delivered] == ["fine"]
