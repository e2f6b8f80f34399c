"""The broker SIGKILLed mid-run and restarted at once on its port and data: the worker processes ride it out.

A broker of this test's own (never the session broker: killing that would break every other test) serves four
`cv-queue worker` processes. When a third of the jobs have results the broker is SIGKILLed and started again on
the same port and data dir. The same four processes must finish the work: none restarted, every job settled
exactly once (by job id, over the results, the DLQ and the parking lot, read read_committed), the group's
committed offsets at the end offsets, and the outage reported in a few client-log lines instead of dozens a
second. The figures are printed (run with -s to see them).

The helpers here (outcome reader, tally, worker fleet) are shared with test_cluster_node_kill.py.
"""

import logging
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cv_queue.broker.cluster import kill_cluster, start_cluster, stop_cluster
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import group_lag
from cv_queue.kafka.admin.topics import provision, topic_specs
from cv_queue.kafka.client.clients import admin_client, poll_batch
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.messages import EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.kafka.procs import spawn_worker, started
from cv_queue_tests.support import free_port_block, read_topic, unique, wait_for

JOBS = 3000
LATENCY_MS = 20
IN_FLIGHT = 4  # ~800 jobs/s at most: two thirds of the jobs are still to do when the broker dies
#: How a worker's log names the logger every librdkafka report goes through (cv_queue.kafka.client.client_log), in
#: the worker's format "<time> <LEVEL> <logger>: <message>".
CLIENT_LOG_TAG = " cv_queue.kafka: "
#: Logged one by one, librdkafka's reports came at ~40-50 a second per worker in an outage (measured here with
#: librdkafka's re-bootstrap on: 673 reports in 14 s); the client log keeps it to a few lines per kind of report.
MAX_CLIENT_LOG_LINES = 30
MAX_OUTAGE_S = 60.0
_SUPPRESSED = re.compile(r"(\d+) repeated report\(s\) suppressed")


# ---------------------------------------------------------------------------------------------- outcomes

@dataclass(frozen=True)
class Outcome:
    """One record in an outcome topic, as the reader got it."""

    kind: str  # "result", "dlq" or "parked"
    job_id: str
    worker_pid: int | None  # the process that wrote a result (from EvaluationResult.worker, "host:pid:slot")
    created_ms: int  # the record's CreateTime: when the worker produced it
    read_at: float  # time.monotonic() when the reader got it


def _quiet_logger() -> logging.Logger:
    # The reader's own reconnect reports during an outage are not what the test is about.
    logger = logging.getLogger("cv_queue_tests.chaos.reader")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


class OutcomeReader(threading.Thread):
    """Reads results, dead letters and parked letters (read_committed) from the beginning while the test runs,
    noting when each arrived, so recovery can be timed and progress watched. Each record is kept once (by its
    topic, partition and offset) even if the client re-reads after a reconnect."""

    def __init__(self, conn: KafkaConnection, settings: QueueSettings) -> None:
        super().__init__(daemon=True, name="chaos-outcome-reader")
        names = settings.topic_names
        self._kinds = {names.results: "result", names.dlq: "dlq", names.parked: "parked"}
        self._consumer = Consumer({
            **conn.client_config(), "group.id": unique("chaos-reader-"), "enable.auto.commit": False,
            "isolation.level": "read_committed", "fetch.wait.max.ms": 50, "enable.partition.eof": False,
            # Reconnect quickly once the broker is back, so the reader's own backoff (up to 10 s by default) does
            # not count as the workers' recovery time.
            "reconnect.backoff.max.ms": 250, "logger": _quiet_logger(), "error_cb": lambda _err: None,
            # As the product's clients (cv_queue.kafka.client.clients): librdkafka's re-bootstrap can leave a client
            # waiting on a decommissioned broker handle after a single broker comes back.
            "metadata.recovery.strategy": "none",
        })
        topics = self._consumer.list_topics(timeout=30).topics
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                               for t in self._kinds for p in topics[t].partitions])
        self._lock = threading.Lock()
        self._seen: set[tuple[str, int, int]] = set()
        self._outcomes: list[Outcome] = []
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                batch = poll_batch(self._consumer, 1000, 0.1)
                now = time.monotonic()
                with self._lock:
                    for msg in batch:
                        where = (msg.topic(), msg.partition(), msg.offset())
                        if msg.error() is not None or where in self._seen:
                            continue
                        self._seen.add(where)
                        self._outcomes.append(self._outcome(msg.topic(), msg, now))
        except BaseException as exc:  # surfaced by snapshot(): a dead reader must not look like no progress
            self.error = exc
        finally:
            self._consumer.close()

    def _outcome(self, topic: str, msg: object, now: float) -> Outcome:
        kind = self._kinds[topic]
        pid = None
        if kind == "result":
            result = EvaluationResult.model_validate_json(msg.value())  # type: ignore[attr-defined]
            pid = int(result.worker.rsplit(":", 2)[1])
        _, created_ms = msg.timestamp()  # type: ignore[attr-defined]
        return Outcome(kind, msg.key().decode(), pid, created_ms, now)  # type: ignore[attr-defined]

    def snapshot(self) -> list[Outcome]:
        if self.error is not None:
            raise RuntimeError(f"the outcome reader failed: {self.error!r}") from self.error
        with self._lock:
            return list(self._outcomes)

    def settled(self) -> set[str]:
        return {o.job_id for o in self.snapshot()}

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


@dataclass(frozen=True)
class Tally:
    """Where every job ended, from a fresh read of the three outcome topics."""

    jobs: int
    by_kind: Counter[str]
    lost: list[str]
    duplicated: dict[str, int]
    unexpected: list[str]

    def line(self) -> str:
        return (f"jobs={self.jobs} results={self.by_kind['result']} dlq={self.by_kind['dlq']} "
                f"parked={self.by_kind['parked']} lost={len(self.lost)} "
                f"duplicated={sum(n - 1 for n in self.duplicated.values())} unexpected={len(self.unexpected)}")


def tally(conn: KafkaConnection, settings: QueueSettings, job_ids: set[str]) -> Tally:
    """Read results, DLQ and parking lot from the beginning (read_committed) and count outcomes per job id."""
    names = settings.topic_names
    per_job: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    for topic, kind in ((names.results, "result"), (names.dlq, "dlq"), (names.parked, "parked")):
        expect = len(job_ids) if kind == "result" else None
        for msg in read_topic(conn, topic, expect=expect, timeout_s=60):
            per_job[msg.key().decode()] += 1
            by_kind[kind] += 1
    return Tally(
        jobs=len(job_ids), by_kind=by_kind,
        lost=sorted(job_ids - set(per_job)),
        duplicated={job: n for job, n in per_job.items() if n > 1},
        unexpected=sorted(set(per_job) - job_ids),
    )


def assert_offsets_committed_to_end(conn: KafkaConnection, settings: QueueSettings) -> None:
    """The worker group committed every main and retry partition up to its (read_committed) end offset."""
    admin = admin_client(conn)
    for topic in (settings.topic_names.main, settings.topic_names.retry):
        behind = [(x.partition, x.committed, x.end_offset) for x in group_lag(admin, settings.group_id, topic)
                  if (x.committed or 0) < x.end_offset]
        assert not behind, f"{topic}: partitions committed short of their end (partition, committed, end): {behind}"


# ---------------------------------------------------------------------------------------------- workers

Fleet = dict[str, subprocess.Popen]


def start_fleet(settings: QueueSettings, bootstrap: str, log_dir: Path, latency_ms: float,
                in_flight: int, extra_env: dict[str, str] | None = None) -> Fleet:
    """One `cv-queue worker` process per slot, on `bootstrap`; returns them by slot name once all started."""
    fleet: Fleet = {}
    try:
        for slot in settings.slots():
            fleet[slot.name] = spawn_worker(settings, slot.name, worker_log(log_dir, slot.name),
                                            latency_ms=latency_ms, in_flight=in_flight,
                                            extra_env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **(extra_env or {})})
        wait_for(lambda: all(started(worker_log(log_dir, s)) or p.poll() is not None for s, p in fleet.items()),
                 120, "every worker to start")
        exited = {s: p.returncode for s, p in fleet.items() if p.poll() is not None}
        # The logs' tails are in the message: CI keeps the test output, not the temporary directory.
        tails = "\n".join(f"--- worker {slot} (exit {code}):\n{log_tail(worker_log(log_dir, slot))}"
                          for slot, code in exited.items())
        assert not exited, f"workers exited during start-up (slot: code): {exited}; see {log_dir}\n{tails}"
    except BaseException:
        stop_fleet(fleet)
        raise
    return fleet


def log_tail(log: Path, lines: int = 25) -> str:
    """The last lines of a process's log ('' when it wrote none)."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def worker_log(log_dir: Path, slot: str) -> Path:
    return log_dir / f"worker-{slot}.log"


def stop_fleet(fleet: Fleet, timeout_s: float = 60) -> dict[str, int]:
    """SIGTERM every worker still running, wait, SIGKILL any that outstay timeout_s; returns the exit codes."""
    for proc in fleet.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = {}
    deadline = time.monotonic() + timeout_s
    for slot, proc in fleet.items():
        try:
            codes[slot] = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[slot] = proc.wait(10)
    return codes


def first_new_result_s(outcomes: list[Outcome], since_wall_ms: int, since: float) -> dict[int, float]:
    """Per worker pid, seconds from `since` (monotonic) until the reader got that worker's first result produced
    after `since_wall_ms`: a record created then can only have been committed after the fault was over."""
    firsts: dict[int, float] = {}
    for o in outcomes:
        if o.kind == "result" and o.worker_pid is not None and o.created_ms > since_wall_ms:
            firsts[o.worker_pid] = min(firsts.get(o.worker_pid, float("inf")), o.read_at - since)
    return firsts


# ---------------------------------------------------------------------------------------------- the test

def test_workers_ride_out_a_broker_sigkill_and_restart(tmp_path: Path) -> None:
    port, data_dir, state_file = free_port_block(width=1), tmp_path / "kafka", tmp_path / "broker-state.json"
    settings = QueueSettings(namespace=unique("outage"))
    jobs = list(sample_jobs(JOBS, seed=81, prefix="outage"))
    job_ids = {j.job_id for j in jobs}
    try:
        state = start_cluster(1, port, data_dir, state_file, progress=False)
        conn = KafkaConnection(bootstrap_servers=state.bootstrap)
        provision(admin_client(conn), topic_specs(settings))
        began = time.monotonic()
        JobProducer(conn, settings.topic_names.main).enqueue_batch(jobs)
        fleet: Fleet = {}
        reader = OutcomeReader(conn, settings)
        reader.start()
        try:
            fleet = start_fleet(settings, state.bootstrap, tmp_path, LATENCY_MS, IN_FLIGHT)
            pids = {slot: p.pid for slot, p in fleet.items()}

            def a_third_done_by_all() -> bool:
                outcomes = reader.snapshot()
                return len(outcomes) >= JOBS // 3 and {o.worker_pid for o in outcomes} >= set(pids.values())

            wait_for(a_third_done_by_all, 120, "a third of the jobs settled, every worker having settled some")
            log_offsets = {slot: worker_log(tmp_path, slot).stat().st_size for slot in fleet}
            kill_cluster(state_file)
            # Taken once the broker is gone: a result created after this was committed after the restart.
            killed_at, killed_wall_ms = time.monotonic(), int(time.time() * 1000)
            settled_at_kill = len(reader.settled())
            assert settled_at_kill < JOBS, "every job settled before the broker was killed: nothing to recover"
            start_cluster(1, port, data_dir, state_file, progress=False)  # same port, same data: a restart
            outage_s = time.monotonic() - killed_at

            wait_for(lambda: reader.settled() >= job_ids, 180, "every job settled after the restart")
            total_s = time.monotonic() - began
            alive = {slot: p.poll() is None for slot, p in fleet.items()}
            client_lines = {slot: _client_log_lines(worker_log(tmp_path, slot), log_offsets[slot]) for slot in fleet}
            outcomes = reader.snapshot()
        finally:
            codes = stop_fleet(fleet)
            reader.stop()
        figures = tally(conn, settings, job_ids)
        assert_offsets_committed_to_end(conn, settings)
    finally:
        stop_cluster(state_file, progress=False)

    recovered = first_new_result_s(outcomes, killed_wall_ms, killed_at)
    first, every = min(recovered.values(), default=float("nan")), max(recovered.values(), default=float("nan"))
    print(f"\nbroker outage: {figures.line()} settled_at_kill={settled_at_kill} total={total_s:.1f}s | "
          f"kill->broker back {outage_s:.1f}s, kill->first new result {first:.1f}s "
          f"(broker back->first new result {first - outage_s:.1f}s), kill->every worker producing {every:.1f}s")
    for slot in fleet:
        print(f"  worker {slot} pid {pids[slot]}: exit {codes[slot]}, first new result "
              f"{recovered.get(pids[slot], float('nan')):.1f}s after the kill, {len(client_lines[slot])} client-log "
              f"line(s) since the kill ({_suppressed(client_lines[slot])} repeated report(s) suppressed)")

    assert all(alive.values()), f"workers died during the outage (slot: alive): {alive}"
    assert codes == dict.fromkeys(fleet, 0), f"a SIGTERM is a clean stop: exit codes {codes}"
    for slot in fleet:  # one process per slot all along: started once, never restarted
        assert worker_log(tmp_path, slot).read_text(errors="replace").count("started on") == 1
    assert set(recovered) == set(pids.values()), \
        f"every worker process produced results after the restart: only {sorted(recovered)} of {pids}"
    assert not figures.lost and not figures.duplicated and not figures.unexpected, figures.line()
    assert figures.by_kind["dlq"] == figures.by_kind["parked"] == 0, \
        f"the handler never fails, so the outage alone dead-lettered jobs: {figures.line()}"
    assert outage_s < MAX_OUTAGE_S, f"the restart took {outage_s:.0f}s; the log-line bound assumes < {MAX_OUTAGE_S}s"
    noisy = {slot: lines for slot, lines in client_lines.items() if len(lines) >= MAX_CLIENT_LOG_LINES}
    assert not noisy, (f"client-error reports are not rate limited over a {outage_s:.0f}s outage: "
                       + "; ".join(f"worker {slot}: {len(lines)} lines, e.g. {lines[-1][:160]!r}"
                                   for slot, lines in noisy.items()))


def _client_log_lines(log: Path, since_byte: int) -> list[str]:
    """The worker's client-log lines (librdkafka errors and log reports, and their summaries) after a byte offset."""
    with log.open("rb") as f:
        f.seek(since_byte)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if CLIENT_LOG_TAG in line]


def _suppressed(lines: list[str]) -> int:
    """How many repeated reports the client log summarised instead of logging (its own count, from its lines)."""
    return sum(int(m.group(1)) for line in lines if (m := _SUPPRESSED.search(line)))
