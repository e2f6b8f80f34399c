"""Jobs whose keys land on a chosen partition, still enqueued through the queue's own producer.

The chaos tests place a poison job on each partition and a backlog behind a hung job. The partition of a key is
the Java client's (murmur2, as librdkafka's murmur2_random computes it), defined and checked against Java and
librdkafka in cv_queue_tests/kafka/test_partitioner.py; the tests here also check each placement against the
broker's acknowledgement.
"""

import random
from collections.abc import Iterator

from cv_queue.evaluation.samples import sample_job
from cv_queue.messages import EvaluationJob
from cv_queue_tests.kafka.test_partitioner import java_partition

partition_for = java_partition


def jobs_on_partition(partition: int, partitions: int, count: int, *, seed: int, prefix: str,
                      labels: dict[str, str] | None = None) -> Iterator[EvaluationJob]:
    """`count` sample jobs whose keys land on `partition` (candidates that land elsewhere are skipped)."""
    rng = random.Random(seed)
    index = made = 0
    while made < count:
        job = sample_job(rng, index, labels, prefix=prefix)
        index += 1
        if partition_for(job.key, partitions) == partition:
            made += 1
            yield job
