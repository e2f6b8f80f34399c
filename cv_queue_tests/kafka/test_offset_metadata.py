"""The offset map against a real broker: it travels inside the transaction, the broker's limit is what we think it
is (the NUL included), a map another tool wrote stops the start, and two start-up defects stay fixed.

- An offset commit's metadata goes with send_offsets_to_transaction and comes back from committed(), whole.
- offset.metadata.max.bytes is read from the broker; a map of exactly limit - 1 characters (plus librdkafka's NUL)
  is taken, one character more aborts the whole transaction: which is why the worker never sends one.
- A BaseException escaping a commit leaves no open transaction behind (read_committed readers are not held up).
- The re-layout race: a layout recorded while a worker starts, between its check and its init_transactions, stops
  that worker before it reads an offset.
"""

import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Producer, TopicPartition

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.client import faults
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.fleet.join import LayoutMismatchError
from cv_queue.kafka.fleet.layout import Layout, read_layout, write_layout
from cv_queue.kafka.metrics import worker_metrics
from cv_queue.kafka.worker import partition_worker as worker
from cv_queue.kafka.worker.offset_map import KAFKA_DEFAULT_METADATA_MAX_BYTES, encode
from cv_queue.kafka.worker.partition_worker import PartitionWorker
from cv_queue.kafka.worker.resume import OffsetMetadataError, metadata_limit
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.kafka.test_crash_points import end_offsets
from cv_queue_tests.support import start_worker, tuned, unique, wait_for

SIMULATED = {"handler": "cv_queue.evaluation.simulated:SimulatedLLM", "handler_options": {"latency_ms": 0}}


def _transactional(conn: KafkaConnection) -> Producer:
    producer = Producer({**conn.client_config(), "transactional.id": unique("txn-")})
    producer.init_transactions(30)
    return producer


def _group_metadata(conn: KafkaConnection, group: str) -> tuple[Consumer, object]:
    consumer = Consumer({**conn.client_config(), "group.id": group, "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    return consumer, consumer.consumer_group_metadata()


def _commit_in_transaction(conn: KafkaConnection, topic: str, group: str, metadata: str) -> None:
    producer = _transactional(conn)
    consumer, group_metadata = _group_metadata(conn, group)
    try:
        producer.begin_transaction()
        producer.send_offsets_to_transaction([TopicPartition(topic, 0, 5, metadata=metadata)], group_metadata, 30)
        producer.commit_transaction(30)
    except KafkaException:
        producer.abort_transaction(30)
        raise
    finally:
        consumer.close()


def _committed(conn: KafkaConnection, topic: str, group: str) -> TopicPartition:
    consumer, _ = _group_metadata(conn, group)
    try:
        return consumer.committed([TopicPartition(topic, 0)], timeout=30)[0]
    finally:
        consumer.close()


def test_the_map_travels_in_the_transaction_and_comes_back_whole(conn, provisioned: QueueSettings):
    topic, group = provisioned.topic_names.main, unique("g-")
    text = encode(5, 900, list(range(7, 899, 3)))
    _commit_in_transaction(conn, topic, group, text)
    committed = _committed(conn, topic, group)
    assert (committed.offset, committed.metadata) == (5, text)


def test_the_broker_limit_is_read_and_counts_the_nul(conn, provisioned: QueueSettings):
    limit = metadata_limit(admin_client(conn), None)
    assert limit == KAFKA_DEFAULT_METADATA_MAX_BYTES  # the test broker keeps Kafka's default; read, not assumed
    assert metadata_limit(admin_client(conn), 512) == 512  # the setting can lower it...
    assert metadata_limit(admin_client(conn), 8192) == limit  # ...never raise it over the broker's
    topic, group = provisioned.topic_names.main, unique("g-")
    _commit_in_transaction(conn, topic, group, "x" * (limit - 1))  # with its NUL: exactly the limit
    assert _committed(conn, topic, group).metadata == "x" * (limit - 1)
    with pytest.raises(KafkaException) as refused:
        _commit_in_transaction(conn, topic, group, "y" * limit)
    assert refused.value.args[0].code() == KafkaError.OFFSET_METADATA_TOO_LARGE
    assert _committed(conn, topic, group).metadata == "x" * (limit - 1)  # the refused transaction left nothing


def test_metadata_another_tool_committed_stops_the_worker_naming_group_and_partition(conn, provisioned):
    settings = tuned(provisioned, worker=SIMULATED)
    slot = settings.slots()[0]
    consumer, _ = _group_metadata(conn, settings.group_id)
    try:
        consumer.commit(offsets=[TopicPartition(settings.topic_names.main, slot.partitions[0], 0,
                                                metadata="checkpoint-of-another-tool")], asynchronous=False)
    finally:
        consumer.close()
    refusing, stop = PartitionWorker(conn, settings, slot), _never()
    _stop_when(stop, lambda: refusing.stats.consumed > 0)  # a worker that starts after all must still end
    with pytest.raises(OffsetMetadataError) as refused:
        refusing.run(stop)
    message = str(refused.value)
    assert settings.group_id in message and f"{settings.topic_names.main}[{slot.partitions[0]}]" in message

    ignoring = tuned(settings, worker={"foreign_offset_metadata": "ignore"})
    JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(40, seed=3))
    stop = _never()
    runner = PartitionWorker(conn, ignoring, slot)
    _stop_when(stop, lambda: runner.stats.succeeded > 0)
    stats = runner.run(stop)
    assert stats.stop_reason == "stopped" and stats.succeeded > 0


def test_a_base_exception_escaping_a_commit_leaves_no_open_transaction(conn, provisioned):
    settings = tuned(provisioned, worker={**SIMULATED, "transaction_timeout_ms": 60_000})
    slot = settings.slots()[0]
    JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(60, seed=4))
    previous = faults.install(faults.FaultPlan.parse("after_produce@1:interrupt"))
    try:
        with pytest.raises(KeyboardInterrupt):
            PartitionWorker(conn, settings, slot).run(_never())
    finally:
        faults.install(previous)
    admin = admin_client(conn)
    results = settings.topic_names.results
    assert sum(end_offsets(admin, results, IsolationLevel.READ_UNCOMMITTED).values()) > 0, \
        "the interrupted transaction wrote nothing to the broker"

    def nothing_open() -> bool:
        stable = end_offsets(admin, results, IsolationLevel.READ_COMMITTED)
        return stable == end_offsets(admin, results, IsolationLevel.READ_UNCOMMITTED)

    # Well below the 60 s transaction timeout: only the close path's abort ends it this soon.
    wait_for(nothing_open, 20, "the interrupted transaction to be aborted on close")


def test_a_layout_recorded_while_the_worker_starts_stops_it_before_it_reads_offsets(conn, provisioned, monkeypatch):
    settings = tuned(provisioned, worker=SIMULATED)
    slot = settings.slots()[0]
    real_fault_point = worker.fault_point
    relayouts = []

    def relayout_in_between(name: str, producer: object = None) -> None:
        # The race: a re-layout records generation 2 (and its workers fence the old slots) after this worker's
        # layout check, before its init_transactions returned a fresh epoch for its old slot.
        if name == "after_init_transactions":
            recorded = read_layout(conn, settings)
            assert recorded is not None
            grown = Layout(partitions=recorded.partitions * 2, partitions_per_worker=recorded.partitions_per_worker)
            relayouts.append(write_layout(conn, settings, grown, recorded.generation + 1, [recorded.layout]))
        real_fault_point(name, producer)

    monkeypatch.setattr(worker, "fault_point", relayout_in_between)
    read_offsets = []
    monkeypatch.setattr(worker, "resume_partitions", lambda *a: read_offsets.append(a) or {})
    with pytest.raises(LayoutMismatchError, match="changed while this worker started"):
        PartitionWorker(conn, settings, slot).run(_never())
    assert relayouts and not read_offsets  # refused before reading a single offset


def _never() -> threading.Event:
    return threading.Event()


def _stop_when(stop: threading.Event, condition: Callable[[], bool], timeout_s: float = 60) -> None:
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()


def test_the_map_size_is_exported_per_partition_while_a_slow_job_holds_the_offset(conn, provisioned):
    settings = tuned(provisioned, worker=SIMULATED)
    slot = settings.slots()[0]
    main, partition = settings.topic_names.main, slot.partitions[0]
    jobs = list(sample_jobs(31, seed=5, prefix=unique("m-"), labels_for={0: {"simulate": "sleep:6000"}}))
    producer = Producer(conn.client_config())
    for job in jobs:  # the slow one first: it holds the committed offset while the others finish above it
        producer.produce(main, key=job.key, value=job.to_bytes(), partition=partition)
    assert producer.flush(30) == 0
    running = start_worker(conn, settings, slot)
    try:
        metrics = worker_metrics(slot.name)
        wait_for(lambda: metrics.map_bytes.get((main, partition), 0) > 0, 30, "a map for the held partition")
        sized = metrics.map_bytes[(main, partition)]
        wait_for(lambda: metrics.map_bytes[(main, partition)] == 0, 30, "the map to empty once the slow job ends")
    finally:
        running.join()
    assert 0 < sized < KAFKA_DEFAULT_METADATA_MAX_BYTES
