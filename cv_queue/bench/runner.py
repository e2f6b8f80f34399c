"""Running the scenarios against one broker, with worker *processes*, and measuring them the same way.

Method (every scenario): the consumers start and report ready; then the jobs are produced as fast as the
producer goes; the clock runs from the first produce to the moment the last job's outcome (a result, or a
dead letter) is visible to a read_committed reader. Latency per job is the same span for that job.
"""

import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from confluent_kafka import KafkaError, Message, Producer

from cv_queue.bench.scenarios import BARE, HUNG, LLM_SCENARIOS, REPLAY, SCENARIOS, Scenario, Workload
from cv_queue.bench.watch import SettleWatcher
from cv_queue.errors import ErrorCategory, TransientJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.replay.replayer import replay_dead_letters
from cv_queue.kafka.replay.request import ReplayRequest
from cv_queue.kafka.wire.envelope import Failure, SourceRecord, dead_letter_record, now_ms
from cv_queue.settings import KafkaConnection, QueueSettings

BIN = Path(sys.executable).parent
Progress = Callable[[str], None]


class BenchError(RuntimeError):
    """A scenario could not be measured (a worker died, jobs were lost or duplicated, time ran out)."""


def _settings(namespace: str, partitions: int, per_worker: int) -> QueueSettings:
    base = QueueSettings(namespace=namespace).model_dump()
    base["topics"].update(partitions=partitions, partitions_per_worker=per_worker)
    return QueueSettings(**base)


def _records(count: int, invalid: float, seed: int) -> list[tuple[bytes, bytes]]:
    """Pre-encoded (key, value) pairs, so encoding is not on the clock."""
    rng = random.Random(seed)
    out = []
    for job in sample_jobs(count, seed=seed, prefix="bench"):
        if invalid and rng.random() < invalid:
            out.append((job.key, b"{ this is not a job"))
        else:
            out.append((job.key, job.to_bytes()))
    return out


def _produce_all(conn: KafkaConnection, topic: str, records: list[tuple[bytes, bytes]],
                 partitions: dict[bytes, int] | None = None, rate_per_s: float | None = None) -> dict[bytes, float]:
    """Produce in list order; `partitions`, when given, is filled with each key's partition from its delivery.
    `rate_per_s`: at most that many records a second (an open-loop load below capacity); None: as fast as it goes."""
    producer = Producer({**conn.client_config(), "enable.idempotence": True, "acks": "all",
                         "compression.type": "snappy", "partitioner": "murmur2_random", "linger.ms": 5,
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000})
    sent_at: dict[bytes, float] = {}

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is None and partitions is not None:
            partitions[msg.key()] = msg.partition()

    # No callback unless asked for: the other scenarios' clocks stay as they were measured.
    extra = {"on_delivery": delivered} if partitions is not None else {}
    started = time.monotonic()
    for index, (key, value) in enumerate(records):
        if rate_per_s is not None and (wait := started + index / rate_per_s - time.monotonic()) > 0:
            producer.poll(wait)  # serves delivery reports while it waits, so sends are not delayed behind them
        sent_at[key] = time.monotonic()
        while True:
            try:
                producer.produce(topic, key=key, value=value, **extra)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(120):
        raise BenchError("the producer could not deliver every record")
    return sent_at


class _RssSampler(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.procs = [psutil.Process(p) for p in pids]
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for proc in self.procs:
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.2)

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


def _worker_env(scenario: Scenario, settings: QueueSettings, workload: Workload,
                extra_env: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **workload.handler_env(),
        "CVQ_NAMESPACE": settings.namespace,
        "CVQ_TOPICS__PARTITIONS": str(scenario.partitions),
        "CVQ_TOPICS__PARTITIONS_PER_WORKER": str(scenario.partitions_per_worker),
        "CVQ_WORKER__MAX_IN_FLIGHT": str(scenario.max_in_flight),
        "CVQ_WORKER__ORDERING": scenario.ordering,
        "CVQ_WORKER__PROGRESS_INTERVAL_S": "3600",
        "CVQ_RETRY__BASE_DELAY_MS": "200",
        **extra_env,
    }


def _spawn_slot(slot: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = log_path.open("wb")
    try:
        return subprocess.Popen([str(BIN / "cv-queue"), "worker", "--partitions", slot], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()  # the child holds its own descriptor


def _await_started(started: list[tuple[str, subprocess.Popen, Path]], timeout_s: float = 90) -> None:
    """Wait for each (slot, process, log) to log its start; BenchError (processes left running) otherwise."""
    deadline = time.monotonic() + timeout_s
    for slot, proc, log_path in started:
        while "started on" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"worker {slot} did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)


def _spawn_workers(scenario: Scenario, settings: QueueSettings, workload: Workload, log_dir: Path,
                   extra_env: dict[str, str]) -> list[subprocess.Popen]:
    env = _worker_env(scenario, settings, workload, extra_env)
    started: list[tuple[str, subprocess.Popen, Path]] = []
    try:
        for slot in settings.slots():
            log_path = log_dir / f"{scenario.name}-{slot.name}.log"
            started.append((slot.name, _spawn_slot(slot.name, env, log_path), log_path))
        _await_started(started)
    except BaseException:
        _stop([proc for _, proc, _ in started])
        raise
    return [proc for _, proc, _ in started]


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process still running, then wait for each; one that outstays 60 s is SIGKILLed."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_all(watcher: SettleWatcher, expected: int, label: str, progress: Progress, timeout_s: float,
              procs: list[subprocess.Popen] | None = None) -> None:
    started = time.monotonic()
    last_report = started
    while len(watcher.first_seen) < expected:
        if time.monotonic() - started > timeout_s:
            raise BenchError(f"{label}: only {len(watcher.first_seen)} of {expected} jobs settled in {timeout_s:.0f}s")
        for proc in procs or []:
            if proc.poll() is not None:
                raise BenchError(f"{label}: a worker exited with code {proc.returncode}")
        if time.monotonic() - last_report >= 1.0:
            last_report = time.monotonic()
            done = len(watcher.first_seen)
            progress(f"  {label}: {done}/{expected} settled ({done / (last_report - started):.0f} jobs/s)")
        time.sleep(0.05)
    elapsed = max(time.monotonic() - started, 1e-6)
    progress(f"  {label}: {expected}/{expected} settled in {elapsed:.1f}s ({expected / elapsed:.0f} jobs/s)")


def _latencies_ms(sent_at: dict[bytes, float], first_seen: dict[bytes, float]) -> tuple[float, float]:
    spans = sorted((first_seen[k] - sent_at[k]) * 1000 for k in sent_at if k in first_seen)
    if not spans:
        return 0.0, 0.0
    p99 = spans[min(len(spans) - 1, round(0.99 * (len(spans) - 1)))]
    return round(statistics.median(spans), 1), round(p99, 1)


def run_worker_scenario(conn: KafkaConnection, scenario: Scenario, workload: Workload, jobs: int, log_dir: Path,
                        progress: Progress, extra_env: dict[str, str] | None = None,
                        lead: list[tuple[bytes, bytes]] | None = None) -> dict:
    """`lead`: records produced before the jobs (a hung job, say), counted among the jobs that must settle."""
    namespace = f"bench-{scenario.name}-{int(time.time() * 1000)}"
    settings = _settings(namespace, scenario.partitions, scenario.partitions_per_worker)
    provision(admin_client(conn), topic_specs(settings))
    records = [*(lead or []), *_records(jobs, workload.invalid, seed=len(scenario.name))]
    jobs = len(records)
    watcher = SettleWatcher(conn, [settings.topic_names.results, settings.topic_names.dlq])
    watcher.start()
    procs = _spawn_workers(scenario, settings, workload, log_dir, extra_env or {})
    sampler = _RssSampler([p.pid for p in procs])
    sampler.start()
    try:
        t0 = time.monotonic()
        sent_at = _produce_all(conn, settings.topic_names.main, records)
        _wait_all(watcher, jobs, scenario.name, progress, timeout_s=max(120.0, jobs * 0.5), procs=procs)
        seconds = max(watcher.first_seen.values()) - t0
        time.sleep(1.0)  # a duplicate would be right behind
    finally:
        _stop(procs)
        peak_rss = sampler.stop()
        watcher.stop()
    missing = jobs - len(watcher.first_seen)
    p50, p99 = _latencies_ms(sent_at, watcher.first_seen)
    rate = jobs / seconds
    return {
        "scenario": scenario.name, "jobs": jobs, "seconds": round(seconds, 2), "jobs_per_s": round(rate, 1),
        "latency_p50_ms": p50, "latency_p99_ms": p99,
        "in_flight": scenario.concurrency(), "partitions": scenario.partitions, "workers": scenario.workers,
        "efficiency": round(rate / (scenario.concurrency() / (workload.latency_ms / 1000)), 3)
        if workload.latency_ms else None,
        "peak_worker_rss_mb": round(peak_rss / 1e6, 1), "lost": missing, "duplicated": watcher.duplicates,
        "handler_ms": workload.latency_ms,
    }


def run_bare_consumer(conn: KafkaConnection, jobs: int, log_dir: Path, progress: Progress) -> dict:
    namespace = f"bench-bare-{int(time.time() * 1000)}"
    settings = _settings(namespace, 8, 2)
    provision(admin_client(conn), topic_specs(settings))
    records = _records(jobs, 0.0, seed=3)
    ready = log_dir / f"{namespace}.ready"
    proc = subprocess.Popen([sys.executable, "-m", "cv_queue.bench.bare_consumer", settings.topic_names.main,
                             str(jobs), str(ready)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    sampler = _RssSampler([proc.pid])
    sampler.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError("the bare consumer did not start")
        time.sleep(0.05)
    t0_wall = time.time()
    _produce_all(conn, settings.topic_names.main, records)
    out, _ = proc.communicate(timeout=600)
    peak_rss = sampler.stop()
    import json

    result = json.loads(out.strip().splitlines()[-1])
    seconds = result["last_at"] - t0_wall
    progress(f"  {BARE}: {result['count']} records in {seconds:.2f}s")
    return {"scenario": BARE, "jobs": jobs, "seconds": round(seconds, 2), "jobs_per_s": round(jobs / seconds, 1),
            "latency_p50_ms": None, "latency_p99_ms": None, "in_flight": None, "partitions": 8, "workers": 1,
            "efficiency": None, "peak_worker_rss_mb": round(peak_rss / 1e6, 1), "lost": jobs - result["count"],
            "duplicated": 0, "handler_ms": 0}


def run_replay(conn: KafkaConnection, letters: int, progress: Progress) -> dict:
    """Fill a DLQ with `letters` dead letters, then time one replay of all of them (transactional, in batches)."""
    namespace = f"bench-replay-{int(time.time() * 1000)}"
    settings = _settings(namespace, 8, 2)
    provision(admin_client(conn), topic_specs(settings))
    producer = Producer({**conn.client_config(), "linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    failure = Failure.from_exception(TransientJobError("upstream timeout"), ErrorCategory.TRANSIENT)
    failed_at = now_ms() - 60_000
    partition = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    for i, job in enumerate(sample_jobs(letters, seed=5, prefix="dead")):
        source = SourceRecord(topic=settings.topic_names.main, partition=i % 8, offset=i, timestamp_ms=failed_at,
                              key=job.key, value=job.to_bytes(), headers=[("traceparent", b"00-bench")])
        out = dead_letter_record(source, failure, 5, 7, "bench", settings.topic_names.dlq, partition, failed_at)
        while True:
            try:
                producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers, partition=out.partition)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(120)
    progress(f"  {REPLAY}: {letters} dead letters planted; replaying")
    report = replay_dead_letters(conn, settings, ReplayRequest(batch_size=5000, max_messages=letters))
    watcher = SettleWatcher(conn, [settings.topic_names.main])
    watcher.start()
    try:
        _wait_all(watcher, letters, REPLAY, progress, timeout_s=120)
        time.sleep(0.5)
    finally:
        watcher.stop()
    return {"scenario": REPLAY, "jobs": letters, "seconds": report.seconds,
            "jobs_per_s": round(report.replayed / report.seconds, 1), "latency_p50_ms": None, "latency_p99_ms": None,
            "in_flight": None, "partitions": 4, "workers": 1, "efficiency": None, "peak_worker_rss_mb": None,
            "lost": letters - report.replayed, "duplicated": watcher.duplicates, "handler_ms": 0}


HUNG_JOB_TIMEOUT_S = 20


def run_hung_job(conn: KafkaConnection, jobs: int, log_dir: Path, progress: Progress) -> dict:
    """`jobs` jobs queued behind one handler call that never returns: the others flow, memory stays bounded.

    One job sleeps for an hour; the job timeout (20 s here) fails it and a single attempt dead-letters it, so the
    run ends. Until then its partition's later outputs are held below the watermark and that partition is paused at
    its byte cap, while the other partitions go on. The figure of interest is the workers' peak RSS.
    """
    hung = next(iter(sample_jobs(1, seed=99, prefix="hung", labels_for={0: {"simulate": "sleep:3600000"}})))
    env = {"CVQ_WORKER__JOB_TIMEOUT_S": str(HUNG_JOB_TIMEOUT_S), "CVQ_RETRY__MAX_ATTEMPTS": "1"}
    row = run_worker_scenario(conn, SCENARIOS["cv-queue"], Workload(latency_ms=1.0), jobs, log_dir, progress, env,
                              lead=[(hung.key, hung.to_bytes())])
    row.update(scenario=HUNG, efficiency=None, job_timeout_s=HUNG_JOB_TIMEOUT_S)
    return row


def run_llm(conn: KafkaConnection, name: str, jobs: int, log_dir: Path, progress: Progress) -> dict:
    """The real LLMEvaluator over HTTP against the local OpenAI-protocol server (1 s per answer).

    The server is the test package's stand-in for a paid API (which cannot be reached from here); it reports the
    most requests it ever had in flight, which is the concurrency the workers really reached.
    """
    from cv_queue.llm_server import server_process  # the paid API's stand-in

    scenario = SCENARIOS[name]
    with server_process("--latency-ms", "1000") as server:
        env = {"CVQ_WORKER__HANDLER": LLM_SCENARIOS[name], "CVQ_WORKER__HANDLER_OPTIONS": "{}",
               "CVQ_LLM__BASE_URL": server.base_url, "CVQ_LLM__API_KEY": "bench-local-key",
               "CVQ_LLM__MAX_CONCURRENT_REQUESTS": str(scenario.max_in_flight)}
        row = run_worker_scenario(conn, scenario, Workload(latency_ms=1000.0), jobs, log_dir, progress, env)
        stats = server.stats()
    row["llm_max_in_flight"] = stats.get("max_in_flight")
    return row
