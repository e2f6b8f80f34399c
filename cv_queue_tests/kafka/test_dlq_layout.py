"""Categories that cannot move: the DLQ layout is recorded at the first start and every start with settings that
would read letters as other categories is refused; replay trusts a letter's category header over its partition."""

import base64
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType

from cv_queue import headers as h
from cv_queue.cli.main import LAYOUT_MISMATCH_EXIT
from cv_queue.errors import ErrorCategory, InvalidPayloadError, PermanentJobError, RateLimitedError, TransientJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.admin.lag import committed_offsets, group_lag
from cv_queue.kafka.admin.topics import wait_until_served
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.fleet import dlq_layout
from cv_queue.kafka.fleet.dlq_layout import (
    DLQ_LAYOUT_KEY,
    DlqLayout,
    DlqLayoutMismatchError,
    DlqLayoutRecord,
    check_dlq_layout,
    read_dlq_layout,
)
from cv_queue.kafka.fleet.layout import read_records
from cv_queue.kafka.replay.replayer import replay_dead_letters
from cv_queue.kafka.replay.request import ReplayRequest
from cv_queue.kafka.wire.envelope import Failure, SourceRecord, dead_letter_record, now_ms
from cv_queue.messages import EvaluationJob
from cv_queue.settings import QueueSettings
from cv_queue_tests.cli.test_cli import cli
from cv_queue_tests.kafka.procs import spawn_worker
from cv_queue_tests.support import read_topic, running_workers, tuned, unique, wait_for

RAISED = {"CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY": "2"}
STRAIGHT_TO_DLQ = {"inprocess_tries": 1, "max_attempts": 1}


def plant_letter(producer: Producer, settings: QueueSettings, job: EvaluationJob, exc: Exception,
                 category: ErrorCategory, partition: int, failed_at_ms: int | None = None) -> None:
    """A dead letter of `job` whose category header says `category`, produced raw into DLQ `partition` (which may
    be another category's, as a worker with other settings, or a hand-made tool, would have filed it)."""
    failed_at_ms = failed_at_ms or now_ms() - 3_600_000
    source = SourceRecord(topic=settings.topic_names.main, partition=0, offset=1, timestamp_ms=failed_at_ms,
                          key=job.key, value=job.to_bytes(), headers=[])
    out = dead_letter_record(source, Failure.from_exception(exc, category), 1, 1, "planted", settings.topic_names.dlq,
                             partition, failed_at_ms)
    producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers, partition=out.partition)


def job_ids(messages: list[Message]) -> Counter[str]:
    """Records by job id (by key for a record that is not a job)."""
    ids: Counter[str] = Counter()
    for m in messages:
        try:
            ids[json.loads(m.value())["job_id"]] += 1
        except (ValueError, TypeError, KeyError):
            ids[(m.key() or b"").decode()] += 1
    return ids


def _committed(conn, settings: QueueSettings, partitions: list[int]) -> dict[int, int | None]:
    return committed_offsets(admin_client(conn), settings.replay_group_id, settings.topic_names.dlq, partitions)


def test_raising_dlq_partitions_per_category_after_letters_exist_refuses_every_start(conn, provisioned,
                                                                                     tmp_path: Path):
    settings = tuned(provisioned, retry=STRAIGHT_TO_DLQ)
    names = settings.topic_names
    labels = {i: {"simulate": "transient-until-replay"} for i in range(3)} | {3: {"simulate": "permanent"},
                                                                             4: {"simulate": "permanent"}}
    jobs = list(sample_jobs(5, seed=16, prefix="dl", labels_for=labels))
    transient, permanent = jobs[:3], jobs[3:]
    JobProducer(conn, names.main).enqueue_batch(jobs)
    raw = Producer(conn.client_config())
    raw.produce(names.main, key=b"bad-1", value=b"certainly not json")
    raw.flush(10)
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        letters = read_topic(conn, names.dlq, expect=6, timeout_s=60)
    assert Counter(m.partition() for m in letters) == Counter({0: 3, 2: 2, 3: 1})  # transient, permanent, invalid
    recorded = read_dlq_layout(conn, admin_client(conn), settings)
    assert recorded is not None and recorded.same_as(DlqLayout.of(settings))  # the first worker recorded it
    originals = Counter({j.job_id: 1 for j in jobs} | {"bad-1": 1})
    assert job_ids(read_topic(conn, names.main, expect=6)) == originals

    # At 2 per category, the default replay (transient, rate_limited) would read partitions 0-3: the permanent and
    # invalid_payload letters as rate_limited ones.
    raised = tuned(settings, topics={"dlq_partitions_per_category": 2})
    with pytest.raises(DlqLayoutMismatchError) as refused:
        replay_dead_letters(conn, raised, ReplayRequest())
    message = str(refused.value)
    assert "2 DLQ partition(s) per category" in message and "1 DLQ partition(s) per category" in message
    assert "CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY=1" in message and "new namespace" in message

    for command in (["dlq", "replay"], ["topics", "provision"]):
        done = cli("--namespace", settings.namespace, *command, env=RAISED)
        assert done.returncode == LAYOUT_MISMATCH_EXIT, (command, done.stdout, done.stderr)
        assert "CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY=1" in done.stderr and "Traceback" not in done.stderr
    log = tmp_path / "raised-worker.log"
    worker = spawn_worker(settings, "0-1", log, extra_env=RAISED)
    assert worker.wait(90) == LAYOUT_MISMATCH_EXIT
    assert "CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY=2" in log.read_text() and "Traceback" not in log.read_text()

    # Someone grows the DLQ by hand to match: the partition count now agrees with the raised setting, and only the
    # record still tells that the letters were filed at 1 per category.
    admin = admin_client(conn)
    admin.create_partitions([NewPartitions(names.dlq, 8)])[names.dlq].result()
    wait_until_served(admin, names.dlq, 8)
    with pytest.raises(DlqLayoutMismatchError):
        replay_dead_letters(conn, raised, ReplayRequest())

    # Nothing was replayed or committed by any refused start.
    assert job_ids(read_topic(conn, names.main, idle_s=1.0)) == originals
    assert set(_committed(conn, settings, list(range(8))).values()) == {None}

    # Under the recorded setting, the default replay moves exactly the transient letters.
    report = replay_dead_letters(conn, settings, ReplayRequest())
    assert (report.replayed, report.refiled, report.parked) == (3, 0, 0)
    assert report.by_category == {"transient": {"replayed": 3}}
    main = job_ids(read_topic(conn, names.main, expect=9))
    assert main == originals + Counter({j.job_id: 1 for j in transient})
    assert all(main[j.job_id] == 1 for j in permanent) and main["bad-1"] == 1


def test_a_letter_whose_category_header_disagrees_with_its_partition_is_refiled_not_replayed(conn, provisioned):
    settings = provisioned
    names = settings.topic_names
    transient_p = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    a, b, c, d = sample_jobs(4, seed=23, prefix="hdr")
    raw = Producer(conn.client_config())  # not transactional: offsets 0-3 of the transient partition, no markers
    plant_letter(raw, settings, a, TransientJobError("blip"), ErrorCategory.TRANSIENT, transient_p)
    plant_letter(raw, settings, b, InvalidPayloadError("not_json"), ErrorCategory.INVALID_PAYLOAD, transient_p)
    plant_letter(raw, settings, c, PermanentJobError("no"), ErrorCategory.PERMANENT, transient_p)
    plant_letter(raw, settings, d, RateLimitedError("slow down"), ErrorCategory.RATE_LIMITED, transient_p)
    raw.flush(10)

    def depth() -> tuple[int | None, int]:
        (lag,) = group_lag(admin_client(conn), settings.replay_group_id, names.dlq, [transient_p])
        return lag.committed, lag.lag

    wait_for(lambda: depth() == (None, 4), 30, "the planted letters")

    dry = replay_dead_letters(conn, settings, ReplayRequest(dry_run=True))
    assert dry.model_dump(include={"replayed", "refiled", "parked"}) == {"replayed": 2, "refiled": 2, "parked": 0}
    assert depth() == (None, 4) and read_topic(conn, names.main, idle_s=1.0) == []

    # A transient replay reads the transient partition: it replays a (transient) and d (rate_limited, asked for
    # too, counted as what its header says), and moves b and c to their own categories' partitions.
    report = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.TRANSIENT,
                                                                           ErrorCategory.RATE_LIMITED]))
    assert (report.replayed, report.refiled, report.parked) == (2, 2, 0)
    assert report.by_category == {"transient": {"replayed": 1}, "rate_limited": {"replayed": 1},
                                  "invalid_payload": {"refiled": 1}, "permanent": {"refiled": 1}}
    assert job_ids(read_topic(conn, names.main, expect=2)) == Counter({a.job_id: 1, d.job_id: 1})
    assert depth() == (4, 0)  # committed past all four: none lost, none left to stop the partition

    moved = [m for m in read_topic(conn, names.dlq, expect=6) if m.partition() != transient_p]
    assert job_ids(moved) == Counter({b.job_id: 1, c.job_id: 1})  # each filed once more, and only once
    by_job = {json.loads(m.value())["job_id"]: m for m in moved}
    for job, category in ((b, ErrorCategory.INVALID_PAYLOAD), (c, ErrorCategory.PERMANENT)):
        letter = by_job[job.job_id]
        assert letter.partition() == settings.dlq_partition(category, job.key)
        assert letter.value() == job.to_bytes() and h.read_str(letter.headers(), h.ERROR_CATEGORY) == category.value
        assert h.read_int(letter.headers(), h.REPLAYS, -1) == 0  # moved, not replayed
    invalid_p = settings.dlq_partition(ErrorCategory.INVALID_PAYLOAD, None)
    assert _committed(conn, settings, [invalid_p])[invalid_p] is None  # its new partition is untouched

    again = replay_dead_letters(conn, settings, ReplayRequest())
    assert (again.scanned, again.replayed, again.refiled) == (0, 0, 0)

    # By hand, each is replayed once from where it now is.
    by_hand = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.INVALID_PAYLOAD,
                                                                            ErrorCategory.PERMANENT]))
    assert (by_hand.replayed, by_hand.refiled) == (2, 0)
    assert by_hand.by_category == {"invalid_payload": {"replayed": 1}, "permanent": {"replayed": 1}}
    assert job_ids(read_topic(conn, names.main, expect=4)) == Counter({j.job_id: 1 for j in (a, b, c, d)})


def test_two_first_starts_with_different_settings_cannot_both_proceed(conn, settings, monkeypatch):
    """Two first starts race: both read "nothing recorded", both write, and the second writes after the first read
    its own record back. The re-read takes the first record, so the second start is refused; with "the latest
    record" it read its own and both ran, each filing and reading letters by its own numbering."""
    admin = admin_client(conn)
    raised = tuned(settings, topics={"dlq_partitions_per_category": 2})
    # No DLQ yet (a fresh namespace whose workers start before provisioning): its partition count tells nothing.
    assert check_dlq_layout(conn, admin, settings, record=True).same_as(DlqLayout.of(settings))

    real = dlq_layout.read_dlq_layout
    reads: list[int] = []

    def read_before_the_first_record_landed(*args: object) -> DlqLayoutRecord | None:
        reads.append(1)
        return None if len(reads) == 1 else real(*args)

    monkeypatch.setattr(dlq_layout, "read_dlq_layout", read_before_the_first_record_landed)
    with pytest.raises(DlqLayoutMismatchError, match="CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY=1"):
        check_dlq_layout(conn, admin, raised, record=True)
    assert len(reads) == 2  # it did write its own record, and read back
    monkeypatch.undo()

    # The first record stays the recorded layout for every later start, whichever setting it has.
    recorded = read_dlq_layout(conn, admin, raised)
    assert recorded is not None and recorded.same_as(DlqLayout.of(settings))
    assert check_dlq_layout(conn, admin, settings, record=True).same_as(DlqLayout.of(settings))
    with pytest.raises(DlqLayoutMismatchError):
        check_dlq_layout(conn, admin, raised, record=False)
    # Each write under a key of its own: compaction keeps the latest record of each key, so it keeps the first one.
    records = read_records(conn, settings, lambda k: (k or b"").startswith(DLQ_LAYOUT_KEY), "DLQ layout")
    assert len(records) == 2 and len({key for key, _ in records}) == 2
    assert DlqLayout.model_validate_json(records[1][1]).same_as(DlqLayout.of(raised))  # the loser's, never read


def _set_max_message_bytes(conn, topic: str, limit: int) -> None:
    admin = admin_client(conn)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(30)

    def applied() -> bool:
        (described,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        return described.result(30)["max.message.bytes"].value == str(limit)

    wait_for(applied, 30, f"max.message.bytes={limit} on {topic}")


def test_a_misfiled_letter_is_refiled_whole_where_the_dlq_takes_it_and_parked_where_it_no_longer_does(conn,
                                                                                                       provisioned):
    """Refiling writes the DLQ, so the replay sizes its producer and its records by the DLQ's max.message.bytes too.
    A 3 MB letter in a DLQ raised to 4 MiB used to exceed the producer's message.max.bytes (sized from the main
    topic and the parking lot only), and a letter larger than a DLQ lowered since it was filed was refused by the
    broker: either failed every run at the same letter. Now the first is refiled whole, the second parked whole."""
    settings = tuned(provisioned, replay={"transaction_give_up_s": 10})  # a failing run ends soon
    names = settings.topic_names
    transient_p = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    permanent_p = settings.dlq_partition(ErrorCategory.PERMANENT, None)
    big, huge, small_1, small_2 = sample_jobs(4, seed=41, prefix=unique("size-"))
    huge = huge.model_copy(update={"cv_text": "x" * 3_000_000})
    # Incompressible: the broker holds a batch, compressed, to max.message.bytes (librdkafka checks it uncompressed).
    big = big.model_copy(update={"cv_text": base64.b64encode(random.Random(41).randbytes(1_350_000)).decode()})
    raw = Producer({**conn.client_config(), "message.max.bytes": 5_000_000})

    _set_max_message_bytes(conn, names.dlq, 4_194_304)
    plant_letter(raw, settings, huge, PermanentJobError("no"), ErrorCategory.PERMANENT, transient_p)
    plant_letter(raw, settings, small_1, TransientJobError("blip"), ErrorCategory.TRANSIENT, transient_p)
    assert raw.flush(30) == 0
    first = replay_dead_letters(conn, settings, ReplayRequest())
    assert (first.replayed, first.refiled, first.parked) == (1, 1, 0)
    [moved] = [m for m in read_topic(conn, names.dlq, expect=3, timeout_s=60) if m.partition() == permanent_p]
    [planted] = [m for m in read_topic(conn, names.dlq, expect=3) if m.partition() == transient_p and
                 m.key() == huge.key]
    assert (moved.key(), moved.value(), moved.headers()) == (planted.key(), planted.value(), planted.headers())

    plant_letter(raw, settings, big, InvalidPayloadError("not_json"), ErrorCategory.INVALID_PAYLOAD, transient_p)
    plant_letter(raw, settings, small_2, TransientJobError("blip"), ErrorCategory.TRANSIENT, transient_p)
    assert raw.flush(30) == 0
    _set_max_message_bytes(conn, names.dlq, 1_048_576)  # lowered after the 1.8 MB letter was filed
    second = replay_dead_letters(conn, settings, ReplayRequest())
    assert (second.replayed, second.refiled, second.parked) == (1, 0, 1)
    assert second.by_category == {"transient": {"replayed": 1}, "invalid_payload": {"parked": 1}}
    [parked] = read_topic(conn, names.parked, expect=1, timeout_s=60)
    assert parked.value() == big.to_bytes()  # whole: the parking lot still takes 2 MiB
    assert b"cannot be refiled" in dict(parked.headers())["cvq.parked.reason"]
    assert job_ids(read_topic(conn, names.main, expect=2)) == Counter({small_1.job_id: 1, small_2.job_id: 1})
    assert _committed(conn, settings, [transient_p])[transient_p] == 4  # nothing left to stop the next run
