"""10,000 jobs through 4 worker processes while workers are SIGKILLed at random moments and restarted at once.

A SIGKILL can land anywhere: mid-handler, between producing a transaction's outputs and committing it, during
start-up fencing. Whatever it hits, every job must end with exactly one committed result, and the worker group's
committed offsets must reach the end of the main topic.
"""

import random
import time
from collections import Counter

import pytest

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import group_lag
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue_tests.chaos.fleet import WorkerFleet
from cv_queue_tests.chaos.ledger import OutcomeLedger

JOBS = 10_000
KILLS = 5
# ~5-20 ms per job (lognormal, mean 10 ms) on 2 handler threads per worker: 8 jobs in flight in all, so the
# run lasts well beyond the kills instead of finishing between two of them.
HANDLER = {"latency_ms": 10, "latency_p99_ms": 20}
IN_FLIGHT = 2
PAUSE_BETWEEN_KILLS_S = (1.0, 3.0)


@pytest.mark.chaos
def test_random_sigkills_lose_and_duplicate_nothing(conn, provisioned, tmp_path):
    settings = provisioned
    jobs = list(sample_jobs(JOBS, seed=8, prefix="kill"))
    deliveries = JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
    slot_of = {d.job_id: s.name for d in deliveries for s in settings.slots() if d.partition in s.partitions}
    per_slot = Counter(slot_of.values())
    seed = random.randrange(2**32)
    rng = random.Random(seed)  # the printed seed replays the same schedule of victims and pauses
    ledger = OutcomeLedger(conn, settings)
    fleet = WorkerFleet(settings, tmp_path, handler_options=HANDLER, in_flight=IN_FLIGHT)
    kills: list[tuple[str, float, bool]] = []  # slot, seconds into the run, whether the victim had started

    def unsettled(slot: str) -> int:
        return per_slot[slot] - sum(1 for j, seen in ledger.outcomes.items() if seen and slot_of.get(j) == slot)

    try:
        began = time.monotonic()
        fleet.start()
        fleet.wait_started()  # the first kill then always lands on a worker in the middle of its work
        while len(kills) < KILLS:
            ledger.read(rng.uniform(*PAUSE_BETWEEN_KILLS_S))  # reading results is the wait between kills
            fleet.assert_alive()
            busy = sorted(slot for slot in per_slot if unsettled(slot))
            assert busy, f"every job settled after only {len(kills)} kill(s): the run is too short to kill mid-flight"
            victim = rng.choice(busy)
            kills.append((victim, time.monotonic() - began, fleet.current[victim].started))
            fleet.kill_and_restart(victim)
        ledger.wait_until(lambda led: led.has_result(slot_of), 240, "a result for every job",
                          on_tick=fleet.assert_alive)
        seconds = time.monotonic() - began
        ledger.settle_quietly()
        exits = fleet.stop()
        lag = group_lag(admin_client(conn), settings.group_id, settings.topic_names.main)
    finally:
        fleet.kill_all()
        ledger.close()

    figures = ledger.figures(slot_of)
    results_by_process = Counter(s.result.worker.split(":")[1] for seen in ledger.outcomes.values() for s in seen
                                 if s.kind == "result")
    print(f"\n[chaos kills] jobs={JOBS} kills={len(kills)} seconds={seconds:.1f} "
          f"duplicates={sum(n - 1 for n in figures.duplicated.values())} lost={len(figures.lost)} seed={seed}")
    print(f"[chaos kills] kills (slot, at s, victim had started): "
          f"{[(slot, round(at, 1), was_started) for slot, at, was_started in kills]}")
    print(f"[chaos kills] worker processes {len(fleet.history)}, of which produced results: "
          f"{len(results_by_process)}; dead letters {ledger.count('dlq')}, parked {ledger.count('parked')}")

    assert kills[0][2], "the first kill must hit a running worker"
    assert not figures.lost, f"{len(figures.lost)} job(s) lost, e.g. {figures.lost[:5]}"
    assert not figures.duplicated, f"duplicated outcomes: {dict(list(figures.duplicated.items())[:5])}"
    assert not figures.unexpected
    assert ledger.count("result") == JOBS and ledger.count("dlq") == 0 and ledger.count("parked") == 0
    assert exits == dict.fromkeys(exits, 0), f"SIGTERM is a clean stop: {exits}"
    assert all(p.committed == p.end_offset for p in lag), f"committed offsets short of the end: {lag}"
    assert sum(p.end_offset for p in lag) == JOBS
