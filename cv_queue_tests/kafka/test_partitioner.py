"""Jobs land on the partition the Java client would pick for their key, and a replayed job goes back there.

The reference is Kafka's own definition: `Utils.murmur2` (MurmurHash2, seed 0x9747b28c) over the key
bytes, made non-negative with `toPositive` (`h & 0x7fffffff`), modulo the partition count. It is written
out below from that definition and checked three ways, so that any one side being wrong fails a test:
fixed vectors of the Java function, the Java client itself run on the cached kafka-clients jar, and
the partitions librdkafka's `murmur2_random` partitioner actually produces to.
"""

import subprocess
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from cv_queue import headers as h
from cv_queue.broker.fetch import cached_libs
from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.replay.replayer import replay_dead_letters
from cv_queue.kafka.replay.request import ReplayRequest
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue_tests.support import read_topic, running_workers, tuned, unique, wait_for

_MASK = 0xFFFFFFFF
_M = 0x5BD1E995
_SEED = 0x9747B28C


def java_murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2: 32-bit MurmurHash2 with Java int (wrapping, signed) arithmetic."""
    length = len(data)
    hash_ = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24  # Java's >>> on an int: an unsigned shift, which >> is on a masked value
        k = (k * _M) & _MASK
        hash_ = ((hash_ * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        hash_ ^= data[whole + 2] << 16
    if tail >= 2:
        hash_ ^= data[whole + 1] << 8
    if tail >= 1:
        hash_ ^= data[whole]
        hash_ = (hash_ * _M) & _MASK
    hash_ ^= hash_ >> 13
    hash_ = (hash_ * _M) & _MASK
    hash_ ^= hash_ >> 15
    return hash_ - (1 << 32) if hash_ & 0x80000000 else hash_


def java_partition(key: bytes, partitions: int) -> int:
    """The Java producer's partition for a keyed record: toPositive(murmur2(key)) % numPartitions."""
    return (java_murmur2(key) & 0x7FFFFFFF) % partitions


# Utils.murmur2 of these keys, as printed by the kafka-clients 4.1.2 jar: every tail length (0-3 bytes
# after the 4-byte blocks), negative and positive results, and multi-byte UTF-8.
JAVA_MURMUR2 = {
    b"": 275646681,
    b"a": -1563381124,
    b"ab": 316155434,
    b"abc": 479470107,
    b"abcd": -1323649548,
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"job-000001-abc": -595275966,
    "é€x".encode(): 1061775224,
}

# Prints "<murmur2> <partition>" per key, computed by the Java client's own classes.
_JAVA_PROGRAM = """
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.utils.Utils;
import java.nio.charset.StandardCharsets;

public class JavaPartitions {
    public static void main(String[] args) {
        int partitions = Integer.parseInt(args[0]);
        for (int i = 1; i < args.length; i++) {
            byte[] key = args[i].getBytes(StandardCharsets.UTF_8);
            System.out.println(Utils.murmur2(key) + " " + BuiltInPartitioner.partitionForKey(key, partitions));
        }
    }
}
"""


def _keys(count: int, prefix: str) -> list[bytes]:
    return [job.key for job in sample_jobs(count, seed=77, prefix=prefix)]


def test_murmur2_matches_the_java_vectors():
    assert {key: java_murmur2(key) for key in JAVA_MURMUR2} == JAVA_MURMUR2


def test_partitions_match_the_java_client(tmp_path: Path):
    libs = cached_libs()
    assert libs is not None, "the Kafka jars are not cached: run `cv-queue broker fetch` (make test does)"
    source = tmp_path / "JavaPartitions.java"
    source.write_text(_JAVA_PROGRAM)
    keys = [k.decode() for k in _keys(60, "java")] + ["21", "foobar", "ab", "abc", "é€x"]
    for partitions in (8, 7, 3):
        out = subprocess.run(["java", "-cp", f"{libs}/*", str(source), str(partitions), *keys],
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        java = [tuple(int(x) for x in line.split()) for line in out.stdout.splitlines()]
        ours = [(java_murmur2(k.encode()), java_partition(k.encode(), partitions)) for k in keys]
        assert ours == java


def _produced_partitions(conn, topic: str, keys: list[bytes]) -> dict[bytes, int]:
    """Where a plain librdkafka producer with the murmur2_random partitioner puts each key."""
    producer = Producer({**conn.client_config(), "partitioner": "murmur2_random"})
    placed: dict[bytes, int] = {}
    failures: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            placed[msg.key()] = msg.partition()

    for key in keys:
        producer.produce(topic, key=key, value=b"x", on_delivery=on_delivery)
    assert producer.flush(30) == 0 and not failures, failures
    return placed


def test_librdkafka_murmur2_random_agrees_with_java(conn, provisioned):
    admin = admin_client(conn)
    odd_topic = unique(f"{provisioned.namespace}-seven-")
    admin.create_topics([NewTopic(odd_topic, num_partitions=7, replication_factor=1)])[odd_topic].result(30)
    keys = [*_keys(80, "rdkafka"), b"21", b"foobar", b"ab", b"abc", "é€x".encode()]
    for topic, partitions in ((provisioned.topic_names.main, 8), (odd_topic, 7)):
        placed = _produced_partitions(conn, topic, keys)
        assert placed == {key: java_partition(key, partitions) for key in keys}
        assert len(set(placed.values())) == partitions  # the keys exercise every partition


def test_enqueued_jobs_land_on_javas_partition(conn, provisioned):
    topic = provisioned.topic_names.main
    jobs = list(sample_jobs(200, seed=31, prefix="placed"))
    deliveries = JobProducer(conn, topic).enqueue_batch(jobs)
    partitions = provisioned.topics.partitions
    assert {d.job_id: d.partition for d in deliveries} == \
        {j.job_id: java_partition(j.key, partitions) for j in jobs}
    stored = {m.key(): m.partition() for m in read_topic(conn, topic, expect=len(jobs))}
    assert stored == {j.key: java_partition(j.key, partitions) for j in jobs}


def test_a_replayed_job_returns_to_its_first_partition(conn, provisioned):
    settings = tuned(provisioned, retry={"inprocess_tries": 1})
    names = settings.topic_names
    count = 16
    jobs = list(sample_jobs(count, seed=32, prefix="replayed",
                            labels_for={i: {"simulate": "permanent"} for i in range(count)}))
    first = {d.job_id.encode(): d.partition for d in JobProducer(conn, names.main).enqueue_batch(jobs)}
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        wait_for(lambda: len(read_topic(conn, names.dlq, idle_s=0.5)) >= count, 90, "every job's dead letter")
    letters = [read_dead_letter(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers())
               for m in read_topic(conn, names.dlq, expect=count)]
    assert sorted(letter.key for letter in letters) == sorted(first)
    assert all(letter.category == ErrorCategory.PERMANENT for letter in letters)
    assert {letter.key: letter.original_partition for letter in letters} == first

    report = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.PERMANENT]))
    assert report.replayed == count

    main = read_topic(conn, names.main, expect=2 * count)
    replayed = {m.key(): m.partition() for m in main if h.read_int(m.headers(), h.REPLAYS, 0) == 1}
    originals = {m.key(): m.partition() for m in main if h.last(m.headers(), h.REPLAYS) is None}
    assert len(main) == 2 * count
    assert originals == first
    assert replayed == first
    assert first == {key: java_partition(key, settings.topics.partitions) for key in first}
    assert len(set(first.values())) > 1  # the jobs span partitions: a replay to "any one" would show
