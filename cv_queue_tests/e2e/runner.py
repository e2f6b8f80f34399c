"""The end-to-end run (`make e2e`, `make ci-e2e-optimized`): broker, Dagster daemon, topics as assets, the worker
fleet, 1,000 jobs with failures, DLQ sensor replay; every job must end exactly where its failure says.

Knobs (environment, as the seed's Makefile named them):
  E2E_JOBS             jobs to submit (default 1000)
  E2E_PARALLEL         concurrent clients; each submits a job and waits for it to settle before the next,
                       like the seed's parallel e2e tests (default 8)
  E2E_WORKER_REPLICAS  worker runs: the 8 partitions are split into this many slots (1, 2, 4 or 8; default 4)
  E2E_HANDLER_MS       mean simulated LLM latency (default 100)
"""

import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
from confluent_kafka import Producer

from cv_queue.broker.cluster import start_cluster, stop_cluster
from cv_queue.defs.resources import KafkaResource, QueueResource
from cv_queue.defs.topics import topic_assets
from cv_queue.defs.workers import active_worker_runs
from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.messages import EvaluationJob
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.daemon import running_daemon
from cv_queue_tests.e2e.outcomes import Outcome, OutcomeWatcher
from cv_queue_tests.support import free_port_block, unique

# The failure mix: kind, share of the jobs, simulate directive.
MIX = [
    ("ok", 0.70, None),
    ("transient-blip", 0.10, "transient:3"),  # outlasts the in-process tries: one retry-topic hop
    ("rate-limited", 0.05, "rate_limited:1:0.2"),
    ("until-replay", 0.05, "transient-until-replay"),
    ("permanent", 0.04, "permanent"),
    ("always-failing", 0.02, "transient:100000"),
    ("invalid", 0.04, None),
]
RUN_LAUNCH_S = 15.0  # a run the DLQ sensor or the fleet sensor asks for starts within this (2 shared cores)


def expected_fate(kind: str, key: bytes, settings: QueueSettings) -> dict[str, list[Outcome]]:
    """Every record each kind of job must leave, in order, under the knobs of _env: 2 handler calls per
    delivery (in-process tries), 2 deliveries (max attempts), auto-replay of transient letters, 1 replay
    at most (max replays)."""
    tries, deliveries = settings.retry.inprocess_tries, settings.retry.max_attempts
    cap = settings.replay.max_replays
    assert (tries, deliveries, cap) == (2, 2, 1), "the fates below are worked out for these knobs"

    def letter(category: ErrorCategory, attempts: int, calls: int, replays: int) -> Outcome:
        return Outcome("dlq", attempts, calls, replays, category.value, settings.dlq_partition(category, key))

    exhausted = {"attempts": deliveries, "calls": deliveries * tries}  # a transient job that never succeeds
    transient = ErrorCategory.TRANSIENT
    fates: dict[str, dict[str, list[Outcome]]] = {
        "ok": {"result": [Outcome("result", 1, 1, 0)]},
        # calls 1-2 fail on the first delivery, call 3 fails and call 4 succeeds on the second
        "transient-blip": {"result": [Outcome("result", 2, 4, 0)]},
        # a rate limit skips the in-process tries: straight to the retry topic, then one call succeeds
        "rate-limited": {"result": [Outcome("result", 1, 2, 0)]},  # a throttle is not an attempt
        # dead-lettered after both deliveries, replayed by the DLQ sensor, then it succeeds at once
        "until-replay": {"dlq": [letter(transient, exhausted["attempts"], exhausted["calls"], 0)],
                         "result": [Outcome("result", 1, 1, 1)]},
        "permanent": {"dlq": [letter(ErrorCategory.PERMANENT, 1, 1, 0)]},
        # dead-lettered, replayed once, dead-lettered again, then parked: it reached the replay cap
        "always-failing": {
            "dlq": [letter(transient, exhausted["attempts"], exhausted["calls"], 0),
                    letter(transient, exhausted["attempts"], exhausted["calls"], cap)],
            "parked": [Outcome("parked", exhausted["attempts"], exhausted["calls"], cap, transient.value,
                               reason=f"replayed {cap} times (cap {cap})")]},
        "invalid": {"dlq": [letter(ErrorCategory.INVALID_PAYLOAD, 0, 0, 0)]},
    }
    return {k: fates[kind].get(k, []) for k in ("result", "dlq", "parked")}


def _plan(count: int, seed: int) -> list[tuple[str, EvaluationJob | bytes]]:
    rng = random.Random(seed)
    kinds = [kind for kind, share, _ in MIX for _ in range(round(share * count))]
    kinds = (kinds + ["ok"] * count)[:count]
    rng.shuffle(kinds)
    directives = {kind: directive for kind, _, directive in MIX}
    labels = {i: {"simulate": directives[k]} for i, k in enumerate(kinds) if directives[k]}
    jobs = list(sample_jobs(count, seed=seed, prefix="e2e", labels_for=labels))
    plan = []
    for i, (kind, job) in enumerate(zip(kinds, jobs, strict=True)):
        if kind == "invalid":
            plan.append((kind, f"e2e-invalid-{i}".encode()))
        else:
            plan.append((kind, job))
    return plan


def _env(namespace: str, replicas: int, handler_ms: float) -> dict[str, str]:
    if 8 % replicas:
        raise SystemExit(f"E2E_WORKER_REPLICAS must divide 8 partitions, not {replicas}")
    return {
        "CVQ_NAMESPACE": namespace,
        "CVQ_TOPICS__PARTITIONS_PER_WORKER": str(8 // replicas),
        "CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
        "CVQ_WORKER__HANDLER_OPTIONS": json.dumps({"latency_ms": handler_ms, "latency_p99_ms": handler_ms * 4}),
        "CVQ_WORKER__PROGRESS_INTERVAL_S": "5",
        "CVQ_RETRY__INPROCESS_TRIES": "2",
        "CVQ_RETRY__INPROCESS_INITIAL_MS": "20",
        "CVQ_RETRY__BASE_DELAY_MS": "100",
        "CVQ_RETRY__MAX_ATTEMPTS": "2",
        "CVQ_REPLAY__COOLDOWN_S": "1",
        "CVQ_REPLAY__SENSOR_INTERVAL_S": "2",
        "CVQ_REPLAY__MAX_REPLAYS": "1",
        "CVQ_FLEET__SENSOR_INTERVAL_S": "2",
        "CVQ_FLEET__RESTART_BACKOFF_S": "5",
    }


def _check(plan: list, outcomes: dict[bytes, list[Outcome]], settings: QueueSettings) -> tuple[Counter, list[str]]:
    """Compare every record each job left with every record its kind must leave: a missing, extra
    (duplicate) or different result, dead letter or parked letter is a problem."""
    tally: Counter = Counter()
    problems = []
    for kind, item in plan:
        key = item.key if isinstance(item, EvaluationJob) else item
        got = outcomes.get(key, [])
        observed = {k: [o for o in got if o.kind == k] for k in ("result", "dlq", "parked")}
        expected = expected_fate(kind, key, settings)
        ok = observed == expected
        tally[(kind, "ok" if ok else "WRONG")] += 1
        if not ok:
            problems.append(f"{key.decode()} ({kind}): expected {expected}, got {observed}")
    return tally, problems


def run(jobs: int = 1000, parallel: int = 8, replicas: int = 4, handler_ms: float = 100.0,
        timeout_s: float = 240.0) -> dict:
    namespace = unique("e2e")
    env = _env(namespace, replicas, handler_ms)
    saved = dict(os.environ)
    os.environ.update(env)  # this process reads the same settings (topics, slots) as the daemon's runs
    try:
        return _with_broker(env, namespace, jobs, parallel, replicas, handler_ms, timeout_s)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _with_broker(env: dict, namespace: str, jobs: int, parallel: int, replicas: int, handler_ms: float,
                 timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="cvq-e2e-") as tmp:
        tmp_path = Path(tmp)
        state_file = tmp_path / "broker.json"
        started_broker = not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        t0 = time.monotonic()
        if started_broker:
            state = start_cluster(1, free_port_block(width=1), state_file=state_file, progress=False)
            os.environ["KAFKA_BOOTSTRAP_SERVERS"] = state.bootstrap
        try:
            return _run(tmp_path, env, namespace, jobs, parallel, replicas, handler_ms, timeout_s, t0)
        finally:
            if started_broker:
                stop_cluster(state_file, progress=False)


def _run(tmp_path: Path, env: dict, namespace: str, jobs: int, parallel: int, replicas: int, handler_ms: float,
         timeout_s: float, t0: float) -> dict:
    conn = KafkaConnection()
    settings = QueueSettings()
    resources = {"kafka": KafkaResource(bootstrap_servers=conn.bootstrap_servers, namespace=namespace),
                 "queue": QueueResource(partitions_per_worker=8 // replicas)}
    plan = _plan(jobs, seed=2026)
    with running_daemon(tmp_path, namespace, env) as daemon:
        print(f"[e2e] provisioning topics (asset materialization) in namespace {namespace}", flush=True)
        assert dg.materialize(topic_assets, resources=resources, instance=daemon.instance).success
        deadline = time.monotonic() + 180
        while len([r for r in active_worker_runs(daemon.instance) if r.status == dg.DagsterRunStatus.STARTED]) \
                < replicas:
            if time.monotonic() > deadline:
                raise SystemExit(f"the fleet did not start {replicas} worker runs:\n{daemon.tail()}")
            time.sleep(0.5)
        setup_s = time.monotonic() - t0
        print(f"[e2e] {replicas} worker run(s) up after {setup_s:.1f}s; submitting {jobs} jobs from "
              f"{parallel} client(s)", flush=True)
        watcher = OutcomeWatcher(conn, settings)
        watcher.start()
        try:
            started = time.monotonic()
            settle_ms = _submit(conn, settings, plan, parallel, watcher)
            submitted_s = time.monotonic() - started
            print(f"[e2e] every job settled once after {submitted_s:.1f}s; waiting for replays and parking",
                  flush=True)
            while True:
                tally, problems = _check(plan, watcher.snapshot(), settings)
                if not problems or time.monotonic() - started > timeout_s:
                    break
                time.sleep(0.5)
            wall_s = time.monotonic() - started
            watch_s = _watch_for_duplicates(plan, watcher, settings) if not problems else 0.0
            caught_up = watcher.catch_up(60)  # judge only once everything written by now has been read
            tally, problems = _check(plan, watcher.snapshot(), settings)
            if not caught_up:
                problems.append("the outcome watcher did not read the topics to their end within 60s")
        finally:
            watcher.stop()
    report = {"jobs": jobs, "parallel": parallel, "worker_replicas": replicas, "handler_ms": handler_ms,
              "setup_s": round(setup_s, 1), "wall_s": round(wall_s, 1), "duplicate_watch_s": round(watch_s, 1),
              "duplicate_window_s": duplicate_window_s(settings),
              "all_jobs_settled_once_s": round(submitted_s, 1), "p50_settle_ms_by_kind": settle_ms,
              "tally": {f"{k}:{v}": n for (k, v), n in sorted(tally.items())}, "problems": problems[:20]}
    return report


def duplicate_window_s(settings: QueueSettings) -> float:
    return settings.replay.sensor_interval_s + settings.fleet.sensor_interval_s + RUN_LAUNCH_S


def _watch_for_duplicates(plan: list, watcher: OutcomeWatcher, settings: QueueSettings) -> float:
    """Every job is in its final place: keep reading for longer than a late duplicate could take to appear.

    A second replay of a letter waits for a DLQ sensor tick, a second worker run for a slot for a fleet
    sensor tick, and either then needs its run launched; stop early only if something already went wrong.
    """
    watch_s = duplicate_window_s(settings)
    print(f"[e2e] every job in its final place; watching {watch_s:.0f}s more for duplicates", flush=True)
    started = time.monotonic()
    while time.monotonic() - started < watch_s:
        time.sleep(0.5)
        if _check(plan, watcher.snapshot(), settings)[1]:
            break
    return time.monotonic() - started


def _submit(conn: KafkaConnection, settings: QueueSettings, plan: list, parallel: int,
            watcher: OutcomeWatcher) -> dict[str, float]:
    """`parallel` closed-loop clients: send a job, wait until it settles (result or dead letter), send the next."""
    producer = Producer({**conn.client_config(), "enable.idempotence": True, "acks": "all",
                         "partitioner": "murmur2_random", "linger.ms": 1})
    slices = [plan[i::parallel] for i in range(parallel)]
    errors: list[BaseException] = []
    latencies: dict[str, list[float]] = {}

    def client(items: list) -> None:
        try:
            for kind, item in items:
                sent = time.monotonic()
                if isinstance(item, EvaluationJob):
                    key, value = item.key, item.to_bytes()
                else:
                    key, value = item, b"{ not a job"
                producer.produce(settings.topic_names.main, key=key, value=value)
                producer.flush(30)
                if not watcher.wait_settled(key, 120):
                    raise TimeoutError(f"{key!r} did not settle within 120s")
                latencies.setdefault(kind, []).append(time.monotonic() - sent)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in slices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {kind: round(statistics.median(values) * 1000) for kind, values in sorted(latencies.items())}


def main() -> int:
    report = run(jobs=int(os.environ.get("E2E_JOBS", "1000")), parallel=int(os.environ.get("E2E_PARALLEL", "8")),
                 replicas=int(os.environ.get("E2E_WORKER_REPLICAS", "4")),
                 handler_ms=float(os.environ.get("E2E_HANDLER_MS", "100")))
    print(json.dumps(report))
    ok = not report["problems"]
    print(f"\nE2E {'PASSED' if ok else 'FAILED'}: {report['jobs']} jobs, {report['worker_replicas']} worker run(s), "
          f"{report['parallel']} client(s): wall time {report['wall_s']}s "
          f"(all settled once after {report['all_jobs_settled_once_s']}s; setup {report['setup_s']}s)")
    for problem in report["problems"]:
        print("  ", problem)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
