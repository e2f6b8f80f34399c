"""A hung job at the head of partition 0 with a large backlog behind it, and the worker's memory stays bounded.

- Key ordering (outputs released at once): the backlog behind the hung job flows as its neighbour partition does;
  the committed offset stays at the hung job and the map above it records the rest.
- Partition ordering (one job at a time per partition): the hung job holds its partition's lane, so only partition 0
  is held; the per-partition byte cap pauses it alone while its neighbour keeps flowing.

Then the worker is stopped while the job still hangs, and a fresh one with a short job timeout takes over: every
job ends exactly once.
"""

import random
import re
import time

import pytest

from cv_queue.evaluation.scorer import SKILL_VOCABULARY, SOFT_SKILLS
from cv_queue.kafka.admin.lag import group_lag
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.messages import EvaluationJob
from cv_queue_tests.chaos.fleet import WorkerFleet
from cv_queue_tests.chaos.ledger import OutcomeLedger
from cv_queue_tests.chaos.partitioning import jobs_on_partition, partition_for

SLOT = "0-1"
BACKLOG = 2500  # jobs behind the hung one on partition 0
PAD_BYTES = 64 * 1024  # of CV text per backlog job: 160 MB behind the hung job in all
NEIGHBOURS = 500  # jobs on partition 1
PARTITION_CAP = 1_048_576  # max_partition_bytes, its minimum
HOLD_S = 5.0  # how long partition 0 is watched after partition 1 finished
FIRST = {"CVQ_WORKER__JOB_TIMEOUT_S": "120", "CVQ_WORKER__MAX_PARTITION_BYTES": str(PARTITION_CAP),
         "CVQ_WORKER__SHUTDOWN_GRACE_MS": "1000"}
FRESH = {"CVQ_WORKER__JOB_TIMEOUT_S": "2", "CVQ_RETRY__MAX_ATTEMPTS": "2", "CVQ_RETRY__BASE_DELAY_MS": "200",
         "CVQ_WORKER__MAX_PARTITION_BYTES": str(PARTITION_CAP)}
_REPORT = re.compile(r"held (\d+) B, paused partitions (\d+)")


def padded_backlog(partitions: int) -> list[EvaluationJob]:
    """Jobs on partition 0 whose CVs carry PAD_BYTES of word salad (it compresses like prose, not like zeros)."""
    rng = random.Random(5)
    words = [*sorted(SKILL_VOCABULARY | SOFT_SKILLS), "delivered", "owned", "migrated", "scaled", "the", "and"]
    pool = " ".join(rng.choices(words, k=400_000))
    out = []
    for job in jobs_on_partition(0, partitions, BACKLOG, seed=6, prefix="backlog"):
        start = rng.randrange(len(pool) - PAD_BYTES)
        out.append(job.model_copy(update={"cv_text": f"{job.cv_text} {pool[start:start + PAD_BYTES]}"}))
    return out


@pytest.mark.chaos
@pytest.mark.parametrize("ordering", ["key", "partition"])
def test_hung_job_holds_only_its_partition_and_memory_stays_bounded(conn, provisioned, tmp_path, ordering):
    settings = provisioned
    partitions = settings.topics.partitions
    producer = JobProducer(conn, settings.topic_names.main)
    [hung] = jobs_on_partition(0, partitions, 1, seed=4, prefix="hung", labels={"simulate": "sleep:3600000"})
    backlog = padded_backlog(partitions)
    neighbours = list(jobs_on_partition(1, partitions, NEIGHBOURS, seed=7, prefix="neighbour"))
    backlog_bytes = sum(len(j.to_bytes()) for j in backlog)
    held_ids = [hung.job_id, *(j.job_id for j in backlog)]
    neighbour_ids = [j.job_id for j in neighbours]
    admin = admin_client(conn)

    ledger = OutcomeLedger(conn, settings)
    fleet = WorkerFleet(settings, tmp_path, handler_options={"latency_ms": 1},
                        env={**FIRST, "CVQ_WORKER__ORDERING": ordering})
    rss: list[int] = []
    try:
        first = fleet.spawn(SLOT)
        fleet.wait_started()
        baseline = first.rss_bytes()
        [hung_delivery] = producer.enqueue_batch([hung])
        assert hung_delivery.partition == 0
        assert {d.partition for d in producer.enqueue_batch(backlog)} == {0}
        assert all(partition_for(j.key, partitions) == 1 for j in neighbours)
        producer.enqueue_batch(neighbours)

        def sample() -> None:
            fleet.assert_alive()
            rss.append(first.rss_bytes())

        flowing_s = ledger.wait_until(lambda led: led.has_result(neighbour_ids), 120, "partition 1's results",
                                      on_tick=sample)
        if ordering == "key":
            ledger.wait_until(lambda led: led.has_result(held_ids[1:]), 120,
                              "partition 0's backlog behind the hung job", on_tick=sample)
        hold_until = time.monotonic() + HOLD_S
        ledger.wait_until(lambda _: time.monotonic() > hold_until, HOLD_S + 10, "the hold", on_tick=sample)
        held_outcomes = [j for j in held_ids if ledger.of(j)]
        committed_p0 = group_lag(admin, settings.group_id, settings.topic_names.main, [0])[0].committed
        reports = [(int(b), int(p)) for b, p in _REPORT.findall(first.log.read_text(errors="replace"))]
        assert first.proc.poll() is None, "the first worker died while the job hung"
        [first_exit] = fleet.stop(timeout_s=60).values()

        fleet.env = {**FRESH, "CVQ_WORKER__ORDERING": ordering}
        fleet.spawn(SLOT)
        recovery_s = ledger.wait_until(lambda led: all(led.of(j) for j in held_ids), 180,
                                       "every held job's outcome after the restart", on_tick=fleet.assert_alive)
        ledger.settle_quietly()
        [fresh_exit] = fleet.stop(timeout_s=60).values()
        lag = group_lag(admin, settings.group_id, settings.topic_names.main, [0, 1])
    finally:
        fleet.kill_all()
        ledger.close()

    figures = ledger.figures([*held_ids, *neighbour_ids])
    mb = 1024 * 1024
    print(f"\n[chaos memory] ordering={ordering}; partition 0: hung job + {BACKLOG} jobs "
          f"({backlog_bytes / mb:.0f} MB); partition 1: {NEIGHBOURS} jobs, all results {flowing_s:.1f}s after the "
          f"last enqueue; partition 0 outcomes while held: {len(held_outcomes)}; committed offset of partition 0 "
          f"while held: {committed_p0} (hung job at {hung_delivery.offset})")
    print(f"[chaos memory] worker RSS: baseline {baseline / mb:.0f} MB, peak {max(rss) / mb:.0f} MB over "
          f"{len(rss)} samples; reported held bytes max {max((b for b, _ in reports), default=0)} "
          f"(cap {PARTITION_CAP}), paused partitions max {max((p for _, p in reports), default=0)}")
    print(f"[chaos memory] exits: first {first_exit}, fresh {fresh_exit}; after the restart every job settled in "
          f"{recovery_s:.1f}s; {figures.line()}")

    assert (committed_p0 or 0) == hung_delivery.offset, "partition 0 committed past the hung job"
    if ordering == "partition":
        assert not held_outcomes, f"partition 0 jobs settled while the job at its head hung: {held_outcomes[:5]}"
        assert any(paused == 1 for _, paused in reports), "partition 0 alone was never reported paused"
    else:  # released at once: everything behind the hung job settled while it hung
        assert set(held_outcomes) == set(held_ids[1:]), "partition 0's backlog was held behind the hung job"
    # Without the per-partition cap, partition ordering would buffer max_buffered (2000) backlog jobs, 125 MB; key
    # ordering would too if the worker kept the records it ran until the watermark passed them (~1,300 of them
    # are run before the held results fill the cap). Either way the growth would pass half the backlog.
    assert max(rss) - baseline < backlog_bytes / 2, "the worker's memory grew with the backlog behind the hung job"
    assert first_exit == 0 and fresh_exit == 0
    assert not figures.lost and not figures.duplicated and not figures.unexpected, figures.line()
    [hung_outcome] = ledger.of(hung.job_id)
    assert hung_outcome.kind == "dlq" and hung_outcome.letter.error_class == "cv_queue.JobTimeout"
    assert all(ledger.of(j)[0].kind == "result" for j in [*held_ids[1:], *neighbour_ids])
    assert all(p.committed == p.end_offset for p in lag), lag
