"""DLQ replay: exactly once, idempotent, capped into the parking lot, filterable without ever committing past a
letter it left, and a dry run commits nothing."""

from collections import Counter

from confluent_kafka import Producer

from cv_queue import headers as h
from cv_queue.errors import ErrorCategory, PermanentJobError, RateLimitedError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.admin.lag import committed_offsets, group_lag
from cv_queue.kafka.client.clients import admin_client, transactional_producer
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.replay.replayer import replay_dead_letters
from cv_queue.kafka.replay.request import ReplayRequest
from cv_queue.kafka.wire.envelope import Failure, SourceRecord, dead_letter_record, now_ms
from cv_queue.messages import EvaluationResult
from cv_queue_tests.cli.test_cli import cli
from cv_queue_tests.support import read_topic, running_workers, tuned, unique, wait_for

STRAIGHT_TO_DLQ = {"inprocess_tries": 1, "max_attempts": 1}


def _dlq_offsets(conn, settings):
    parts = settings.dlq_partitions(list(ErrorCategory))
    return committed_offsets(admin_client(conn), settings.replay_group_id, settings.topic_names.dlq, parts)


def test_replay_moves_each_letter_back_exactly_once(conn, provisioned):
    settings = tuned(provisioned, retry=STRAIGHT_TO_DLQ)
    jobs = list(sample_jobs(20, seed=8, labels_for={i: {"simulate": "transient-until-replay"} for i in range(20)}))
    JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs, headers=[("origin", b"api")])
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        letters = read_topic(conn, settings.topic_names.dlq, expect=20, timeout_s=60)
    assert len(letters) == 20

    dry = replay_dead_letters(conn, settings, ReplayRequest(dry_run=True))
    assert (dry.dry_run, dry.replayed, dry.scanned) == (True, 20, 20)
    assert all(v is None for v in _dlq_offsets(conn, settings).values())  # nothing committed
    assert len(read_topic(conn, settings.topic_names.main, expect=20)) == 20  # nothing produced

    report = replay_dead_letters(conn, settings, ReplayRequest())
    assert report.replayed == 20 and report.parked == 0
    assert report.by_category == {"transient": {"replayed": 20}}
    main = read_topic(conn, settings.topic_names.main, expect=40)
    replayed = [m for m in main if h.last(m.headers(), h.REPLAYS) is not None]
    assert len(main) == 40 and len(replayed) == 20
    by_key = {j.key: j for j in jobs}
    for msg in replayed:
        assert msg.value() == by_key[msg.key()].to_bytes()  # the original bytes, not a re-encoding
        assert h.read_int(msg.headers(), h.REPLAYS, 0) == 1
        assert h.last(msg.headers(), h.ATTEMPTS) is None  # attempts reset
        assert ("origin", b"api") in msg.headers()
    dlq_committed = _dlq_offsets(conn, settings)
    transient_partition = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    assert dlq_committed[transient_partition] is not None and dlq_committed[transient_partition] >= 20

    again = replay_dead_letters(conn, settings, ReplayRequest())
    assert (again.scanned, again.replayed) == (0, 0)
    assert len(read_topic(conn, settings.topic_names.main, expect=40)) == 40

    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        results = read_topic(conn, settings.topic_names.results, expect=20, timeout_s=60)
    decoded = [EvaluationResult.model_validate_json(m.value()) for m in results]
    assert Counter(r.job_id for r in decoded) == Counter({j.job_id: 1 for j in jobs})
    assert all(r.replays == 1 for r in decoded)


def test_letters_over_the_replay_cap_and_undecodable_ones_are_parked(conn, provisioned):
    settings = tuned(provisioned, retry=STRAIGHT_TO_DLQ)
    job = next(sample_jobs(1, seed=12, labels_for={0: {"simulate": "transient:1000"}}))
    JobProducer(conn, settings.topic_names.main).enqueue(job)
    transient_partition = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        read_topic(conn, settings.topic_names.dlq, expect=1, timeout_s=60)
        first = replay_dead_letters(conn, settings, ReplayRequest(max_replays=1))
        assert first.replayed == 1
        letters = read_topic(conn, settings.topic_names.dlq, expect=2, timeout_s=60)  # it failed again
    assert [h.read_int(m.headers(), h.REPLAYS, -1) for m in letters] == [0, 1]
    raw = Producer(conn.client_config())
    raw.produce(settings.topic_names.dlq, key=b"stray", value=b"not a dead letter", partition=transient_partition)
    raw.flush(10)

    second = replay_dead_letters(conn, settings, ReplayRequest(max_replays=1))
    assert (second.replayed, second.parked) == (0, 2)
    parked = {m.key(): m for m in read_topic(conn, settings.topic_names.parked, expect=2)}
    capped = parked[job.key]
    assert capped.value() == job.to_bytes()
    assert "replayed 1 times (cap 1)" in h.read_str(capped.headers(), h.PARKED_REASON)
    assert h.read_str(capped.headers(), h.ERROR_CATEGORY) == "transient"  # the whole story stays attached
    assert h.read_int(capped.headers(), h.ORIGINAL_OFFSET, -1) >= 0
    assert "undecodable" in h.read_str(parked[b"stray"].headers(), h.PARKED_REASON)
    assert parked[b"stray"].value() == b"not a dead letter"
    main = read_topic(conn, settings.topic_names.main, expect=2)
    assert len(main) == 2  # the original and the one replay; parking republished nothing


def _plant_letter(producer: Producer, settings, key: bytes, exc: Exception, category: ErrorCategory,
                  failed_at_ms: int) -> None:
    source = SourceRecord(topic=settings.topic_names.main, partition=0, offset=1, timestamp_ms=failed_at_ms,
                          key=key, value=b"{}", headers=[])
    out = dead_letter_record(source, Failure.from_exception(exc, category), 1, 1, "planted", settings.topic_names.dlq,
                             settings.dlq_partition(category, key), failed_at_ms)
    producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers, partition=out.partition)


def _committed_and_depth(conn, settings, partition: int) -> tuple[int | None, int]:
    """The replay group's committed offset on a DLQ partition, and its depth (end offset - committed)."""
    (lag,) = group_lag(admin_client(conn), settings.replay_group_id, settings.topic_names.dlq, [partition])
    return lag.committed, lag.lag


class QuotaError(Exception):
    pass


def test_filters_by_category_error_class_and_age(conn, provisioned):
    settings = provisioned
    raw = Producer(conn.client_config())
    old = now_ms() - 3_600_000
    _plant_letter(raw, settings, b"p1", QuotaError("quota"), ErrorCategory.PERMANENT, old)
    _plant_letter(raw, settings, b"p2", QuotaError("quota"), ErrorCategory.PERMANENT, now_ms())
    _plant_letter(raw, settings, b"p3", PermanentJobError("no"), ErrorCategory.PERMANENT, old)
    _plant_letter(raw, settings, b"i1", ValueError("bad"), ErrorCategory.INVALID_PAYLOAD, old)
    raw.flush(10)

    default = replay_dead_letters(conn, settings, ReplayRequest())
    assert default.scanned == 0  # transient/rate_limited partitions only: permanent letters are not read

    young = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.PERMANENT],
                                                              error_classes=["QuotaError"], min_age_s=600))
    permanent_partition = settings.dlq_partition(ErrorCategory.PERMANENT, None)
    assert young.replayed == 1  # p1
    assert young.left_too_young == {permanent_partition: 1}  # p2 stops the scan: p2 and p3 stay for later
    assert young.left_unmatched == {}  # p3 (another class) was never reached
    assert young.by_category == {"permanent": {"replayed": 1}}
    assert _committed_and_depth(conn, settings, permanent_partition) == (1, 2)

    later = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.PERMANENT]))
    assert later.replayed == 2  # p2 and p3, now that no filter holds them back
    assert _committed_and_depth(conn, settings, permanent_partition) == (3, 0)
    replayed_keys = sorted(m.key() for m in read_topic(conn, settings.topic_names.main, expect=3))
    assert replayed_keys == [b"p1", b"p2", b"p3"]
    assert _dlq_offsets(conn, settings)[settings.dlq_partition(ErrorCategory.INVALID_PAYLOAD, None)] is None


def test_error_class_filter_stops_at_the_first_other_class_and_commits_only_past_what_it_replayed(conn, provisioned):
    settings = provisioned
    partition = settings.dlq_partition(ErrorCategory.PERMANENT, None)
    raw = Producer(conn.client_config())  # not transactional: offsets 0, 1, 2 and no markers
    old = now_ms() - 3_600_000
    _plant_letter(raw, settings, b"a1", QuotaError("quota"), ErrorCategory.PERMANENT, old)
    _plant_letter(raw, settings, b"b", PermanentJobError("no"), ErrorCategory.PERMANENT, old)
    _plant_letter(raw, settings, b"a2", QuotaError("quota"), ErrorCategory.PERMANENT, old)
    raw.flush(10)
    wait_for(lambda: _committed_and_depth(conn, settings, partition) == (None, 3), 30, "the planted letters")

    filtered = cli("--namespace", settings.namespace, "dlq", "replay", "--category", "permanent",
                   "--error-class", "QuotaError")
    assert filtered.returncode == 0, filtered.stderr
    assert "replayed 1," in filtered.stdout
    assert f"left letters of other error classes from offsets {{{partition}: 1}}" in filtered.stdout
    assert _committed_and_depth(conn, settings, partition) == (1, 2)  # exactly past a1; b and a2 still count
    assert [m.key() for m in read_topic(conn, settings.topic_names.main, idle_s=1.0)] == [b"a1"]

    again = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.PERMANENT],
                                                              error_classes=["QuotaError"]))
    assert (again.scanned, again.replayed, again.left_unmatched) == (1, 0, {partition: 1})  # b stops it at once
    assert _committed_and_depth(conn, settings, partition) == (1, 2)

    unfiltered = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.PERMANENT]))
    assert (unfiltered.replayed, unfiltered.left_unmatched) == (2, {})
    assert _committed_and_depth(conn, settings, partition) == (3, 0)
    main = read_topic(conn, settings.topic_names.main, expect=3)
    assert Counter(m.key() for m in main) == Counter({b"a1": 1, b"b": 1, b"a2": 1})


def test_a_filter_stop_at_the_last_letter_does_not_commit_to_the_end_offset(conn, provisioned):
    """A stopped partition is not finished: the commit to the end offset (past the final transaction marker)
    that a partition read to its end gets must not carry a stopped one past the letter it stopped at."""
    settings = provisioned
    permanent = settings.dlq_partition(ErrorCategory.PERMANENT, None)
    transient = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    txn = transactional_producer(conn, unique("planter-"))
    txn.init_transactions(30)
    txn.begin_transaction()
    old = now_ms() - 3_600_000
    _plant_letter(txn, settings, b"a", QuotaError("quota"), ErrorCategory.PERMANENT, old)
    _plant_letter(txn, settings, b"b", PermanentJobError("no"), ErrorCategory.PERMANENT, old)
    # A partition the run reads to its end, so the run waits at the ends and checks positions there.
    _plant_letter(txn, settings, b"t", QuotaError("quota"), ErrorCategory.TRANSIENT, old)
    txn.commit_transaction(30)  # permanent: a@0, b@1, marker@2 (end 3); transient: t@0, marker@1 (end 2)
    # The commit returns before the markers are written: wait until the letters are visible.
    wait_for(lambda: _committed_and_depth(conn, settings, permanent) == (None, 3), 30, "the planted letters")

    filtered = replay_dead_letters(conn, settings, ReplayRequest(
        categories=[ErrorCategory.PERMANENT, ErrorCategory.TRANSIENT], error_classes=["QuotaError"]))
    assert (filtered.replayed, filtered.left_unmatched) == (2, {permanent: 1})
    assert filtered.committed_offsets == {permanent: 1, transient: 2}
    assert _committed_and_depth(conn, settings, permanent) == (1, 2)  # b and the marker still count
    assert _committed_and_depth(conn, settings, transient) == (2, 0)  # finished: past its marker

    rest = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.PERMANENT]))
    assert rest.replayed == 1
    assert _committed_and_depth(conn, settings, permanent) == (3, 0)
    assert sorted(m.key() for m in read_topic(conn, settings.topic_names.main, expect=3)) == [b"a", b"b", b"t"]


def test_replay_honours_the_wait_a_rate_limiter_asked_for_up_to_the_budget(conn, provisioned):
    settings = tuned(provisioned, retry={"rate_limit_budget_s": 600})
    raw = Producer(conn.client_config())
    an_hour_ago, twenty_minutes_ago = now_ms() - 3_600_000, now_ms() - 1_200_000

    def plant(key: bytes, failed_at_ms: int, asked: str) -> None:
        source = SourceRecord(topic=settings.topic_names.main, partition=0, offset=1, timestamp_ms=failed_at_ms,
                              key=key, value=b"{}", headers=[])
        failure = Failure.from_exception(RateLimitedError("429"), ErrorCategory.RATE_LIMITED)
        out = dead_letter_record(source, failure, 0, 1, "planted", settings.topic_names.dlq,
                                 settings.dlq_partition(ErrorCategory.RATE_LIMITED, key), failed_at_ms)
        raw.produce(out.topic, key=out.key, value=out.value, partition=out.partition,
                    headers=[*out.headers, (h.RETRY_AFTER_REQUESTED, asked.encode())])

    rate_limited_partition = settings.dlq_partition(ErrorCategory.RATE_LIMITED, None)
    plant(b"waited", an_hour_ago, "1800")  # asked for 30 minutes an hour ago: over
    plant(b"absurd", twenty_minutes_ago, "1e+12")  # the budget (10 minutes) caps it: over
    plant(b"waiting", now_ms(), "120")  # two minutes from now: not yet, and it stops the partition there
    plant(b"behind", an_hour_ago, "garbage")  # no readable wait, but behind one that waits
    raw.flush(10)

    first = replay_dead_letters(conn, settings, ReplayRequest(categories=[ErrorCategory.RATE_LIMITED]))
    assert first.replayed == 2
    assert first.left_too_young == {rate_limited_partition: 2}
    assert sorted(m.key() for m in read_topic(conn, settings.topic_names.main, expect=2)) == [b"absurd", b"waited"]
    # Without the wait, as a replay that does not read it would: everything goes.
    shorter = tuned(settings, retry={"rate_limit_budget_s": 1e-3})
    rest = replay_dead_letters(conn, shorter, ReplayRequest(categories=[ErrorCategory.RATE_LIMITED]))
    assert (rest.replayed, rest.left_too_young) == (2, {})
