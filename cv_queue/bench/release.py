"""The worker's output release, measured in both of its modes within one `cv-queue bench` run.

CVQ_WORKER__RELEASE_OUTPUTS selects how a finished job's output reaches readers:
- `in_order` (the old behaviour): held until every earlier offset of its partition has finished (the watermark);
- `at_once` (the default): released in the next transaction; the settled offsets above the committed one ride in
  the commit's metadata, so a restart skips them.
Every scenario here runs once per mode and emits one row per mode (field "release_outputs"), so the two are compared
on the same broker, machine and minute.

head-of-line: the cv-queue deployment (8 partitions, 4 workers x 32 in flight, per-key order). 1% of the jobs take
20 s and are produced first, so most partitions have one at their head; the others take 50 ms. Jobs are sent at
250 a second (below capacity), so the figure is waiting behind the slow jobs, not queueing behind a burst.
Measured: latency of the fast jobs only, from their produce to their result being readable read_committed, and the
share readable within 3 s. Target: fast p99 under 1 s with at_once (with in_order a fast job behind a slow head
waits ~20 s).

crash-rework: the same mix on 8 partitions and 2 workers, every handler call logged to a file. Once the victim (the
worker owning the most slow jobs) has run every one of its fast jobs, and before its slow jobs can finish, it is
SIGKILLed and restarted in the same slot with the same environment. Measured: handler re-executions from the call
log, the victim's jobs unsettled at the kill, lost and duplicated results. Target: with at_once, re-executed jobs no
more than the jobs in flight at the kill (its slow jobs, at most max_in_flight); in_order redoes every held job.
"""

import json
import subprocess
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psutil

from cv_queue.bench.runner import (
    BenchError,
    Progress,
    _await_started,
    _latencies_ms,
    _produce_all,
    _RssSampler,
    _settings,
    _spawn_slot,
    _stop,
    _wait_all,
    _worker_env,
)
from cv_queue.bench.scenarios import CRASH_REWORK, HEAD_OF_LINE, SCENARIOS, Scenario, Workload
from cv_queue.bench.watch import SettleWatcher
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.settings import KafkaConnection, QueueSettings, Slot

RELEASE_ENV = "CVQ_WORKER__RELEASE_OUTPUTS"
RELEASE_MODES = ("at_once", "in_order")
SLOW_MS = 20_000
FAST_MS = 50.0
SLOW_SHARE = 0.01
READABLE_WITHIN_S = 3.0
# head-of-line sends its jobs at this rate, well below what 4 workers finish (~2,000 jobs/s of 50 ms at 108 free
# slots), so a fast job's latency is its own work plus waiting for slow ones, not queueing behind a burst.
HEAD_OF_LINE_RATE = 250.0
JOB_TIMEOUT_S = 180  # well above SLOW_MS: a timeout would turn a slow job into a retry and blur both figures
SETTLE_TIMEOUT_S = 180.0
KILL_GRACE_S = 1.0  # after the victim's last fast call: its 50 ms and a 50 ms commit interval, several times over
KILL_MARGIN_S = 5.0  # the kill must come this long before the slow jobs could finish, or they are not in flight
CRASH_SHAPE = Scenario(CRASH_REWORK, 8, 2, 32, "key",
                       "8 partitions, 2 workers x 32 in flight, per-key order; one worker SIGKILLed and restarted")


def slow_count(jobs: int) -> int:
    """The slow jobs among `jobs`: 1%, at least one (something must block a head), leaving at least one fast job."""
    if jobs < 2:
        raise ValueError("a release scenario needs at least 2 jobs (one slow, one fast)")
    return min(jobs - 1, max(1, round(jobs * SLOW_SHARE)))


def fast_latency(sent_at: dict[bytes, float], first_seen: dict[bytes, float], slow: set[bytes],
                 within_s: float = READABLE_WITHIN_S) -> dict[str, float | int | None]:
    """p50/p99 (ms) of the fast jobs only, and the share of them readable within `within_s` (unsettled ones: not)."""
    fast = {key: at for key, at in sent_at.items() if key not in slow}
    p50, p99 = _latencies_ms(fast, first_seen)
    within = sum(1 for key, at in fast.items() if key in first_seen and first_seen[key] - at <= within_s)
    return {"fast_jobs": len(fast), "fast_p50_ms": p50, "fast_p99_ms": p99,
            "fast_share_within_3s": round(within / len(fast), 4) if fast else None}


def call_counts(log_text: str) -> Counter[str]:
    """Handler calls per job id in a SimulatedLLM call log. A last line without its newline is a write still in
    progress when the file was read mid-run: it is left out rather than counted as a truncated id."""
    lines = log_text.split("\n")[:-1]
    return Counter(line for line in lines if line)


def reexecutions(counts: Counter[str]) -> tuple[int, int]:
    """(jobs whose handler ran more than once, handler calls beyond each job's first)."""
    again = [n for n in counts.values() if n > 1]
    return len(again), sum(n - 1 for n in again)


def pick_victim(slots: list[Slot], partitions: dict[bytes, int], slow: set[bytes]) -> Slot:
    """The slot owning the most slow jobs (the first on a tie): the crash that can cost in_order the most."""
    owned = Counter(partitions[key] for key in slow if key in partitions)
    return max(slots, key=lambda slot: sum(owned[p] for p in slot.partitions))


def _jobs(count: int, seed: int, prefix: str) -> tuple[list[tuple[bytes, bytes]], set[bytes]]:
    """Pre-encoded records, the slow ones first (so they reach the partition heads), and the slow jobs' keys."""
    slow = slow_count(count)
    labels = {i: {"simulate": f"sleep:{SLOW_MS}"} for i in range(slow)}
    records = [(job.key, job.to_bytes()) for job in sample_jobs(count, seed=seed, prefix=prefix, labels_for=labels)]
    return records, {key for key, _ in records[:slow]}


def _handler_env(call_log: Path | None = None) -> dict[str, str]:
    options: dict[str, object] = {"latency_ms": FAST_MS, "seed": 7}
    if call_log is not None:
        options["call_log"] = str(call_log)
    return {"CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
            "CVQ_WORKER__HANDLER_OPTIONS": json.dumps(options), "CVQ_WORKER__JOB_TIMEOUT_S": str(JOB_TIMEOUT_S)}


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


class _Deployment:
    """One run's topics, read_committed watcher and worker processes. Leaving the `with` block, normally or by an
    exception, stops every process it ever started (SIGTERM, then SIGKILL after 60 s) and the watcher."""

    def __init__(self, conn: KafkaConnection, scenario: Scenario, mode: str, extra_env: dict[str, str],
                 log_dir: Path) -> None:
        self.conn = conn
        self.scenario = scenario
        self.label = f"{scenario.name}/{mode}"
        self.settings: QueueSettings = _settings(f"bench-{scenario.name}-{mode.replace('_', '-')}-"
                                                 f"{int(time.time() * 1000)}", scenario.partitions,
                                                 scenario.partitions_per_worker)
        self.env = _worker_env(scenario, self.settings, Workload(latency_ms=FAST_MS),
                               {**extra_env, RELEASE_ENV: mode})
        self.log_prefix = log_dir / f"{scenario.name}-{mode}"
        self.current: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}  # the current process's log, per slot
        self.every: list[subprocess.Popen] = []  # every process started, killed ones too: all are stopped
        self.watcher: SettleWatcher | None = None
        self.sampler: _RssSampler | None = None
        self.peak_rss = 0

    def __enter__(self) -> "_Deployment":
        try:
            provision(admin_client(self.conn), topic_specs(self.settings))
            self.watcher = SettleWatcher(self.conn, [self.settings.topic_names.results,
                                                     self.settings.topic_names.dlq])
            self.watcher.start()
            _await_started([self._spawn(slot.name) for slot in self.settings.slots()])
            self.sampler = _RssSampler([proc.pid for proc in self.every])
            self.sampler.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            _stop(self.every)
        finally:
            if self.sampler is not None:
                self.peak_rss = self.sampler.stop()
            if self.watcher is not None:
                self.watcher.stop()

    def _spawn(self, slot: str) -> tuple[str, subprocess.Popen, Path]:
        log_path = Path(f"{self.log_prefix}-{slot}-{len(self.every)}.log")
        proc = _spawn_slot(slot, self.env, log_path)
        self.every.append(proc)
        self.current[slot] = proc
        self.logs[slot] = log_path
        return slot, proc, log_path

    def kill_and_restart(self, slot: str) -> float:
        """SIGKILL the slot's worker, as a crash or an OOM kill would, and start it again; seconds to be ready."""
        victim = self.current[slot]
        victim.kill()
        victim.wait(30)
        began = time.monotonic()
        spawned = self._spawn(slot)
        _await_started([spawned])
        ready = time.monotonic() - began
        if self.sampler is not None:  # the sampler thread only iterates the list: appending to it is safe
            self.sampler.procs.append(psutil.Process(spawned[1].pid))
        return ready

    def procs(self) -> list[subprocess.Popen]:
        return list(self.current.values())

    def check_alive(self) -> None:
        for slot, proc in self.current.items():
            if proc.poll() is not None:
                raise BenchError(f"{self.label}: worker {slot} exited with code {proc.returncode}:\n"
                                 f"{self.logs[slot].read_text(errors='replace')[-2000:]}")

    def seen(self) -> dict[bytes, float]:
        """A copy of the outcomes seen so far: dict.copy runs without yielding to the watcher thread."""
        assert self.watcher is not None
        return self.watcher.first_seen.copy()


def _common_row(name: str, mode: str, run: _Deployment, sent_at: dict[bytes, float], seconds: float,
                slow: set[bytes]) -> dict:
    seen = run.seen()
    p50, p99 = _latencies_ms(sent_at, seen)
    jobs = len(sent_at)
    assert run.watcher is not None
    return {
        "scenario": name, "release_outputs": mode, "jobs": jobs, "seconds": round(seconds, 2),
        "jobs_per_s": round(jobs / seconds, 1), "latency_p50_ms": p50, "latency_p99_ms": p99,
        "in_flight": run.scenario.concurrency(), "partitions": run.scenario.partitions,
        "workers": run.scenario.workers, "efficiency": None, "peak_worker_rss_mb": round(run.peak_rss / 1e6, 1),
        "lost": jobs - len(seen), "duplicated": run.watcher.duplicates, "handler_ms": FAST_MS,
        "slow_jobs": len(slow), "slow_ms": SLOW_MS, **fast_latency(sent_at, seen, slow),
    }


def _settle(run: _Deployment, expected: int, t0: float, progress: Progress) -> float:
    """Wait for every outcome; the seconds from the first produce to the last outcome."""
    assert run.watcher is not None
    try:
        _wait_all(run.watcher, expected, run.label, progress, timeout_s=SETTLE_TIMEOUT_S, procs=run.procs())
    except BenchError:
        run.check_alive()  # the log tail of a worker that died (the logs go with the temporary directory)
        raise
    seconds = max(run.seen().values()) - t0
    time.sleep(1.0)  # a duplicate would be right behind
    return seconds


def _head_of_line_once(conn: KafkaConnection, jobs: int, mode: str, log_dir: Path, progress: Progress) -> dict:
    scenario = replace(SCENARIOS["cv-queue"], name=HEAD_OF_LINE)
    records, slow = _jobs(jobs, seed=11, prefix="hol")
    partitions: dict[bytes, int] = {}
    with _Deployment(conn, scenario, mode, _handler_env(), log_dir) as run:
        t0 = time.monotonic()
        sent_at = _produce_all(conn, run.settings.topic_names.main, records, partitions, HEAD_OF_LINE_RATE)
        seconds = _settle(run, len(records), t0, progress)
    row = _common_row(HEAD_OF_LINE, mode, run, sent_at, seconds, slow)
    row["produce_rate_per_s"] = HEAD_OF_LINE_RATE
    row["partitions_with_slow_head"] = len({partitions[key] for key in slow if key in partitions})
    return row


def _await_kill_point(run: _Deployment, call_log: Path, fast: set[bytes], slow: set[bytes], deadline: float,
                      progress: Progress) -> set[bytes]:
    """Wait until the victim has called every one of its fast jobs and they are readable or KILL_GRACE_S passed.

    A condition rather than a fixed sleep, the same for both modes: in_order never makes them readable while the
    slow heads run, so there the grace ends the wait. Returns the victim's jobs called but not readable at the kill
    point. BenchError if a slow job of the victim settled first (the kill would no longer hit it in flight).
    """
    wanted = {key.decode() for key in fast}
    while not wanted.issubset(call_counts(_read(call_log))):
        run.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{run.label}: the victim had not run its {len(fast)} fast jobs before the slow ones "
                             f"could finish; use fewer jobs")
        time.sleep(0.05)
    grace_end = min(time.monotonic() + KILL_GRACE_S, deadline)
    while time.monotonic() < grace_end and not fast.issubset(run.seen()):
        time.sleep(0.05)
    seen = run.seen()
    if slow & seen.keys():
        raise BenchError(f"{run.label}: a slow job settled before the kill; the kill came too late")
    called = {job.encode() for job in call_counts(_read(call_log))}
    unsettled = (called & (fast | slow)) - seen.keys()
    progress(f"  {run.label}: victim ran all {len(fast)} fast jobs; {len(unsettled)} unsettled at the kill")
    return unsettled


def _crash_rework_once(conn: KafkaConnection, jobs: int, mode: str, log_dir: Path, progress: Progress) -> dict:
    call_log = log_dir / f"{CRASH_REWORK}-{mode}-calls.log"
    call_log.unlink(missing_ok=True)  # a fresh log per mode: its counts are this run's calls only
    records, slow = _jobs(jobs, seed=13, prefix="crash")
    partitions: dict[bytes, int] = {}
    with _Deployment(conn, CRASH_SHAPE, mode, _handler_env(call_log), log_dir) as run:
        t0 = time.monotonic()
        sent_at = _produce_all(conn, run.settings.topic_names.main, records, partitions)
        victim = pick_victim(run.settings.slots(), partitions, slow)
        owned = {key for key, p in partitions.items() if p in victim.partitions}
        unsettled = _await_kill_point(run, call_log, owned - slow, owned & slow,
                                      t0 + SLOW_MS / 1000 - KILL_MARGIN_S, progress)
        kill_at = time.monotonic() - t0
        restart_s = run.kill_and_restart(victim.name)
        progress(f"  {run.label}: worker {victim.name} SIGKILLed at {kill_at:.1f}s, restarted in {restart_s:.1f}s")
        seconds = _settle(run, len(records), t0, progress)
    counts = call_counts(_read(call_log))
    jobs_again, extra_calls = reexecutions(counts)
    row = _common_row(CRASH_REWORK, mode, run, sent_at, seconds, slow)
    row.update(
        victim_slot=victim.name, victim_jobs=len(owned), victim_slow_jobs=len(owned & slow),
        victim_unsettled_at_kill=len(unsettled), in_flight_limit=CRASH_SHAPE.max_in_flight,
        kill_at_s=round(kill_at, 2), restart_s=round(restart_s, 2), handler_calls=sum(counts.values()),
        reexecuted_jobs=jobs_again, extra_calls=extra_calls,
        reexecuted_slow=sum(1 for key in slow if counts[key.decode()] > 1),
    )
    return row


def run_head_of_line(conn: KafkaConnection, jobs: int, log_dir: Path, progress: Progress) -> list[dict]:
    """One head-of-line row per release mode (module docstring)."""
    return [_head_of_line_once(conn, jobs, mode, log_dir, progress) for mode in RELEASE_MODES]


def run_crash_rework(conn: KafkaConnection, jobs: int, log_dir: Path, progress: Progress) -> list[dict]:
    """One crash-rework row per release mode (module docstring)."""
    return [_crash_rework_once(conn, jobs, mode, log_dir, progress) for mode in RELEASE_MODES]
