"""Worker behaviour under faults, on the real broker: layout changes, flow control that resumes, hung jobs, and a
shutdown with jobs still running. Each asserts what it read from the topics or the group's committed offsets."""

import threading
from collections import Counter

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue.kafka.admin.lag import group_lag
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.fleet.layout import Layout, write_layout
from cv_queue.kafka.wire.envelope import read_dead_letter
from cv_queue.kafka.worker.execution import JOB_TIMEOUT_CLASS
from cv_queue.kafka.worker.partition_worker import PartitionWorker, WorkerStats
from cv_queue.messages import EvaluationResult
from cv_queue.settings import KafkaConnection, QueueSettings, Slot
from cv_queue_tests.support import read_topic, tuned, wait_for


class RecordingWorker(PartitionWorker):
    """A worker that remembers the most partitions it ever had paused at once."""

    most_paused = 0

    def _update_pauses(self) -> None:
        super()._update_pauses()
        self.most_paused = max(self.most_paused, len(self._paused))


class Running:
    def __init__(self, conn: KafkaConnection, settings: QueueSettings, slot: Slot, handler: object) -> None:
        self.worker = RecordingWorker(conn, settings, slot, handler=handler)  # type: ignore[arg-type]
        self.stop = threading.Event()
        self.stats: list[WorkerStats] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.stats.append(self.worker.run(self.stop))
        except BaseException as exc:
            self.errors.append(exc)

    def join(self, timeout_s: float = 60) -> WorkerStats:
        self.stop.set()
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> WorkerStats:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the worker did not stop"
        assert not self.errors, self.errors
        return self.stats[0]


def _results_by_job(conn: KafkaConnection, settings: QueueSettings) -> Counter[str]:
    return Counter(m.key().decode() for m in read_topic(conn, settings.topic_names.results, idle_s=1.0))


def test_a_worker_of_a_new_layout_fences_the_old_one_and_output_stays_exactly_once(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 1, "progress_interval_s": 1.0})
    deliveries = JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(240, seed=11))
    wanted = {d.job_id: d.partition for d in deliveries if d.partition < 4}
    handler = SimulatedLLM(latency_ms=400)  # the old worker still has ~20 s of work when the new one starts
    old = Running(conn, settings, Slot(partitions=(0, 1)), handler)
    wait_for(lambda: old.worker.stats.succeeded >= 5, 60, "the old layout's worker to work")

    wider = tuned(settings, topics={"partitions_per_worker": 4}, worker={"max_in_flight": 8})
    # The layout changes under a running worker, as only a forced write (or a race) can do since re-layouts
    # refuse while a worker lives: fencing still keeps the output exactly once.
    write_layout(conn, settings, Layout.of(wider), generation=2)
    new = Running(conn, wider, Slot(partitions=(0, 1, 2, 3)), SimulatedLLM(latency_ms=20))
    assert old.wait(60).stop_reason == "fenced"
    wait_for(lambda: set(wanted) <= set(_results_by_job(conn, settings)), 120, "every job of partitions 0-3")
    assert new.join().stop_reason == "stopped"

    results = read_topic(conn, settings.topic_names.results, idle_s=1.0)
    per_job = Counter(m.key().decode() for m in results)
    assert set(per_job) == set(wanted) and max(per_job.values()) == 1, "lost or duplicated across the layouts"
    by_slot: dict[str, set[int]] = {}
    for message in results:
        result = EvaluationResult.model_validate_json(message.value())
        by_slot.setdefault(result.worker.rsplit(":", 1)[-1], set()).add(wanted[result.job_id])
    assert by_slot["0-1"] <= {0, 1} and by_slot["0-3"] <= {0, 1, 2, 3}
    assert by_slot["0-3"] & {0, 1}, "the new layout took over partitions 0 and 1"


# Small fetches and prefetch: when a partition is paused most of its records are still on the broker, so a worker
# that never resumed it would never see them (and the test would fail here, not in a chaos test's timeout).
SMALL_FETCHES = {"max_partition_fetch_bytes": 8192, "queued_max_messages_kbytes": 1}


def test_a_hung_job_pauses_only_its_partition_which_resumes_after_the_timeout(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 8, "job_timeout_s": 8.0, "max_partition_records": 30,
                                          "progress_interval_s": 0.5}, retry={"max_attempts": 1},
                     fetch=SMALL_FETCHES)
    producer = JobProducer(conn, settings.topic_names.main)
    hung = producer.enqueue(next(iter(sample_jobs(1, seed=3, prefix="hung",
                                                  labels_for={0: {"simulate": "sleep:600000"}}))))
    slot = next(s for s in settings.slots() if hung.partition in s.partitions)
    later = [d for d in producer.enqueue_batch(sample_jobs(800, seed=4)) if d.partition in slot.partitions]
    same = [d for d in later if d.partition == hung.partition]
    assert len(same) > 30, "the hung partition must get more records behind the hung job than its cap"
    running = Running(conn, settings, slot, SimulatedLLM(latency_ms=2))
    try:
        letters = []
        wait_for(lambda: letters.extend(read_topic(conn, settings.topic_names.dlq, idle_s=0.5)) or letters, 90,
                 "the hung job's dead letter")
        wait_for(lambda: {d.job_id for d in later} <= set(_results_by_job(conn, settings)), 90,
                 "every other job of the slot (the paused partition resumed)")
    finally:
        stats = running.join()
    letter = read_dead_letter(letters[0].topic(), letters[0].partition(), letters[0].offset(), letters[0].key(),
                              letters[0].value(), letters[0].headers())
    assert (letter.error_class, letter.original_partition) == (JOB_TIMEOUT_CLASS, hung.partition)
    assert running.worker.most_paused >= 1, "the held partition was never paused"
    assert stats.timed_out == 1
    # The other partition kept flowing while the hung job ran: its results are older than the dead letter.
    results = read_topic(conn, settings.topic_names.results, idle_s=1.0)
    other = [m.timestamp()[1] for m in results if m.key().decode() in {d.job_id for d in later
                                                                      if d.partition != hung.partition}]
    assert other and max(other) < letters[0].timestamp()[1]
    assert max(_results_by_job(conn, settings).values()) == 1


def test_handlers_falling_behind_pause_intake_which_resumes(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 2, "max_buffered": 10}, fetch=SMALL_FETCHES)
    slot = settings.slots()[0]
    mine = [d for d in JobProducer(conn, settings.topic_names.main).enqueue_batch(sample_jobs(300, seed=9))
            if d.partition in slot.partitions]
    running = Running(conn, settings, slot, SimulatedLLM(latency_ms=3))
    try:
        wait_for(lambda: {d.job_id for d in mine} <= set(_results_by_job(conn, settings)), 90,
                 "every job of the slot")
    finally:
        running.join()
    assert running.worker.most_paused == len(slot.partitions) * 2, "every source partition paused at the cap"
    assert max(_results_by_job(conn, settings).values()) == 1


def test_shutdown_with_jobs_running_commits_exactly_the_completed_prefix(conn, provisioned):
    settings = tuned(provisioned, worker={"max_in_flight": 2, "shutdown_grace_ms": 500})
    slot = settings.slots()[0]
    producer = JobProducer(conn, settings.topic_names.main)
    warm = [d for d in producer.enqueue_batch(sample_jobs(40, seed=21, prefix="warm"))
            if d.partition in slot.partitions]
    running = Running(conn, settings, slot, SimulatedLLM(latency_ms=1))
    wait_for(lambda: {d.job_id for d in warm} <= set(_results_by_job(conn, settings)), 60, "the warm-up jobs")
    slow = producer.enqueue_batch(sample_jobs(16, seed=22, prefix="slow",  # ~4 land on the slot's partitions
                                              labels_for={i: {"simulate": "sleep:8000"} for i in range(16)}))
    assert any(d.partition in slot.partitions for d in slow)
    tail = producer.enqueue_batch(sample_jobs(40, seed=23, prefix="tail"))
    wait_for(lambda: running.worker._pool.in_flight >= 1, 30, "a slow job to start")
    stats = running.join(timeout_s=30)
    assert stats.stop_reason == "stopped"

    done = set(_results_by_job(conn, settings))
    enqueued = [d for d in (*warm, *slow, *tail) if d.partition in slot.partitions]
    assert any(d.job_id not in done for d in enqueued), "some job must have been cut off by the stop"
    lag = {x.partition: x for x in group_lag(admin_client(conn), settings.group_id, settings.topic_names.main)}
    for partition in slot.partitions:
        offsets = sorted((d.offset, d.job_id) for d in enqueued if d.partition == partition)
        unfinished = [offset for offset, job_id in offsets if job_id not in done]
        expected = unfinished[0] if unfinished else lag[partition].end_offset
        assert lag[partition].committed == expected, f"partition {partition}: commit must stop at the first " \
                                                     f"unfinished job"

    # A restarted worker redelivers what was cut off (the running jobs and the buffered ones): exactly once.
    again = Running(conn, settings, slot, SimulatedLLM(latency_ms=1))
    try:
        wait_for(lambda: {d.job_id for d in enqueued} <= set(_results_by_job(conn, settings)), 60, "every job")
    finally:
        again.join()
    assert max(_results_by_job(conn, settings).values()) == 1
