"""The fleet sensor's judgment of dead worker runs (defs/liveness.py), as pure logic over simulated ticks.

Invariants: a run is never declared dead while its slot was seen live, or its status changed, less than dead_after_s
ago, nor on silence that fell in a gap of the sensor's own sightings; and a run whose slot stays silent under an
unbroken watch is declared dead within one tick of dead_after_s.
"""

from datetime import UTC, datetime

import dagster as dg
from hypothesis import given
from hypothesis import strategies as st

from cv_queue.defs import tags
from cv_queue.defs.liveness import Sightings, dead_worker_runs, status_since
from cv_queue.kafka.fleet.layout import Layout
from cv_queue.kafka.fleet.presence import member_client_id, member_slot
from cv_queue.settings import KafkaConnection, Slot

DEAD_AFTER_S = 60.0
SLOT = "0-1"


def _record(status: dg.DagsterRunStatus, since: float, slot: str = SLOT) -> dg.RunRecord:
    run = dg.DagsterRun(job_name="partition_worker", run_id=f"run-{slot}", status=status,
                        tags={tags.WORKER_SLOT: slot})
    stamp = datetime.fromtimestamp(since, UTC)
    return dg.RunRecord(storage_id=1, dagster_run=run, create_timestamp=stamp, update_timestamp=stamp,
                        start_time=since if status == dg.DagsterRunStatus.STARTED else None, end_time=None)


# A tick: seconds since the previous one, and whether the run's slot had a live worker then.
ticks = st.lists(st.tuples(st.floats(0.5, 45.0), st.booleans()), min_size=1, max_size=60)


@given(ticks, st.sampled_from([dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
def test_never_dead_within_dead_after_of_a_sighting_a_status_change_or_a_gap(schedule, status):
    started = 1_000_000.0
    record = _record(status, started)
    sightings, now = Sightings(), started
    last_evidence = started  # the run's status change, then each sighting and each gap's end
    previous_check = None
    for delay, alive in schedule:
        now += delay
        if previous_check is None or now - previous_check > DEAD_AFTER_S / 2:
            last_evidence = now  # silence during a gap counts for nothing
        live = {SLOT} if alive else set()
        sightings = sightings.observe(live, now, DEAD_AFTER_S)
        previous_check = now
        if alive:
            last_evidence = now
        dead = dead_worker_runs([record], sightings, live, now, DEAD_AFTER_S)
        if now - last_evidence < DEAD_AFTER_S:
            assert dead == [], (now - last_evidence, sightings)
        else:
            assert [d.run_id for d in dead] == [record.dagster_run.run_id]
            assert dead[0].silent_s >= DEAD_AFTER_S


@given(st.floats(1.0, DEAD_AFTER_S / 2), st.integers(0, 5))
def test_a_slot_silent_under_an_unbroken_watch_is_dead_within_one_tick_of_dead_after(interval, seen_ticks):
    started = 5_000.0
    record = _record(dg.DagsterRunStatus.STARTED, started)
    sightings, now = Sightings(), started
    for _ in range(seen_ticks):  # alive for a while, then killed
        now += interval
        sightings = sightings.observe({SLOT}, now, DEAD_AFTER_S)
    last_seen = now
    while True:
        now += interval
        sightings = sightings.observe(set(), now, DEAD_AFTER_S)
        if dead_worker_runs([record], sightings, set(), now, DEAD_AFTER_S):
            break
        assert now - last_seen < DEAD_AFTER_S + interval, "silent past dead_after_s and still not judged dead"
    assert now - max(last_seen, started) >= DEAD_AFTER_S


def test_runs_of_other_statuses_or_live_slots_are_never_dead():
    sightings = Sightings().observe(set(), 0.0, DEAD_AFTER_S).observe(set(), 20.0, DEAD_AFTER_S)
    sightings = sightings.observe({"2-3"}, 40.0, DEAD_AFTER_S).observe({"2-3"}, 1000.0 - 20, DEAD_AFTER_S)
    sightings = Sightings(checked_at=980.0, watching_since=0.0, last_seen=sightings.last_seen)
    records = [_record(dg.DagsterRunStatus.NOT_STARTED, 0.0), _record(dg.DagsterRunStatus.CANCELING, 0.0),
               _record(dg.DagsterRunStatus.STARTED, 0.0, slot="2-3")]
    assert dead_worker_runs(records, sightings, {"2-3"}, 1000.0, DEAD_AFTER_S) == []
    assert [d.slot for d in dead_worker_runs([_record(dg.DagsterRunStatus.STARTED, 0.0)], sightings, {"2-3"},
                                             1000.0, DEAD_AFTER_S)] == [SLOT]


def test_a_cursor_that_does_not_parse_starts_the_count_afresh():
    assert Sightings.load("not json") == Sightings()
    assert Sightings.load('{"last_seen": "nope"}') == Sightings()
    kept = Sightings(checked_at=3.0, watching_since=1.0, last_seen={"0-1": 2.0})
    assert Sightings.load(kept.dump()) == kept


def test_status_since_reads_naive_storage_timestamps_as_utc():
    record = _record(dg.DagsterRunStatus.STARTING, 1_700_000_000.0)
    naive = record._replace(update_timestamp=record.update_timestamp.replace(tzinfo=None))
    assert status_since(naive) == 1_700_000_000.0


@given(st.lists(st.integers(0, 500), min_size=1, max_size=4, unique=True).map(sorted), st.integers(1, 64),
       st.integers(1, 8))
def test_a_member_names_its_slot_only_for_its_own_layout(partitions, topic_partitions, per_worker):
    layout = Layout(partitions=topic_partitions, partitions_per_worker=per_worker)
    slot = Slot(partitions=tuple(partitions))
    client_id = member_client_id(KafkaConnection(client_id="my-app-worker-7"), layout, slot)
    assert member_slot(client_id, layout) == slot.name
    other = Layout(partitions=topic_partitions + 1, partitions_per_worker=per_worker)
    assert member_slot(client_id, other) is None
    assert member_slot("some-other-client", layout) is None


def test_a_run_launched_moments_ago_has_dead_after_s_to_join_however_long_the_slot_was_silent():
    sightings = Sightings()
    for now in range(0, 1000, 15):  # an unbroken watch: the slot silent all along (its previous run died)
        sightings = sightings.observe(set(), float(now), DEAD_AFTER_S)
    for status in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
        fresh = _record(status, 990.0)
        assert dead_worker_runs([fresh], sightings, set(), 990.0 + DEAD_AFTER_S - 1, DEAD_AFTER_S) == []
        assert len(dead_worker_runs([fresh], sightings, set(), 990.0 + DEAD_AFTER_S, DEAD_AFTER_S)) == 1


def test_a_starting_run_gets_start_timeout_s_and_a_started_one_dead_after_s():
    sightings = Sightings()
    for now in range(0, 400, 10):
        sightings = sightings.observe(set(), float(now), DEAD_AFTER_S, tick_s=10)
    starting, started = _record(dg.DagsterRunStatus.STARTING, 100.0), _record(dg.DagsterRunStatus.STARTED, 100.0)
    at = 100.0 + DEAD_AFTER_S + 1
    assert [d.run_id for d in dead_worker_runs([starting, started], sightings, set(), at, DEAD_AFTER_S, 180.0)] == \
        [started.dagster_run.run_id]
    assert len(dead_worker_runs([starting], sightings, set(), 100.0 + 180.0, DEAD_AFTER_S, 180.0)) == 1


def test_a_sensor_ticking_slower_than_half_dead_after_still_judges():
    sightings = Sightings()
    record = _record(dg.DagsterRunStatus.STARTED, 0.0)
    for now in range(0, 200, 40):  # ticks 40 s apart, dead_after 60 s
        sightings = sightings.observe(set(), float(now), DEAD_AFTER_S, tick_s=40)
    assert sightings.watching_since == 0.0
    assert dead_worker_runs([record], sightings, set(), 160.0, DEAD_AFTER_S)


@given(st.integers(0, 100), st.floats(0, 100), st.floats(0, 5000))
def test_the_restart_pause_doubles_with_failures_in_a_row_up_to_its_cap(failures, base, cap):
    from cv_queue.defs.workers import restart_pause_s

    pause = restart_pause_s(failures, base, cap)
    if failures == 0:
        assert pause == 0
        return
    assert 0 <= pause <= cap
    assert pause == min(cap, base * 2 ** (failures - 1)) or failures > 31
    assert restart_pause_s(failures + 1, base, cap) >= pause
