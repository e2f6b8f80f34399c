"""A 3-node cluster (replication factor 3, min.insync.replicas 2) loses a node to SIGKILL in the middle of 5,000
jobs, and gets it back: every job settles exactly once.

The cluster is this test's own. Jobs arrive in three batches so that every phase carries work whatever the
machine's speed: 3,000 before the kill (the node dies when a third of them have settled), 1,000 enqueued while the
node is down (acks=all still succeeds: two in-sync replicas remain), 1,000 once the node is back. Four `cv-queue
worker` processes run throughout. The node killed is the coordinator of the workers' consumer group. Figures
are printed (run with -s to see them).
"""

import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from cv_queue.broker.cluster import BrokerState, kill_node, restart_dead_nodes, start_cluster, stop_cluster
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.topics import describe_topics, provision, topic_specs
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.kafka.client.stall import EXIT_CLIENT_STALLED
from cv_queue.settings import KafkaConnection, QueueSettings, TopicSettings
from cv_queue_tests.chaos.diagnose import stalled_worker_report
from cv_queue_tests.chaos.test_broker_outage import (
    Fleet,
    OutcomeReader,
    assert_offsets_committed_to_end,
    first_new_result_s,
    start_fleet,
    stop_fleet,
    tally,
    worker_log,
)
from cv_queue_tests.kafka.procs import spawn_worker
from cv_queue_tests.support import free_port_block, unique, wait_for

BEFORE, WHILE_DOWN, AFTER = 3000, 1000, 1000
LATENCY_MS = 8
IN_FLIGHT = 8
#: Set by the broker's node config (cv_queue/broker/node_config.py), not by provisioning: printed, not asserted.
INTERNAL_TOPICS = ("__transaction_state", "__consumer_offsets")
#: Generous: a dead node's leaderships move once its broker session (9 s) expires.
MAX_DEGRADED_RECOVERY_S = 120.0
#: Above send_offsets_to_transaction's own 30 s timeout: a worker stuck on a dead coordinator (librdkafka#5511) exits
#: and is restarted well within MAX_DEGRADED_RECOVERY_S (a commit legitimately slower than this costs a restart).
WORKER_ENV = {"CVQ_WORKER__CLIENT_STALL_S": "45"}


def _replicated_settings() -> QueueSettings:
    """The queue's defaults with every topic at RF 3 and min.insync.replicas 2 (topic_specs gives the DLQ and the
    parking lot the main config plus their retention and size, so all six get it)."""
    main_config = {**TopicSettings().main_config, "min.insync.replicas": "2"}
    return QueueSettings(namespace=unique("nodekill"),
                         topics=TopicSettings(replication_factor=3, main_config=main_config))


def _min_isr(admin: AdminClient, topic: str) -> str | None:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entry = admin.describe_configs([resource])[resource].result().get("min.insync.replicas")
    return None if entry is None else entry.value


def _replication_as_every_node_sees_it(admin: AdminClient, names: list[str]) -> dict[str, tuple[int, str | None]]:
    """Replication factor and min.insync.replicas per topic; {} while some node does not know a new topic yet
    (any node may answer a describe, and the topics were created a moment ago)."""
    try:
        live = describe_topics(admin, names)
        return {name: (state.replication_factor, _min_isr(admin, name)) for name, state in live.items()}
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return {}
        raise


def _check_replication(admin: AdminClient, settings: QueueSettings) -> dict[str, tuple[int, str | None]]:
    """Replication factor and min.insync.replicas of every queue topic (asserted: 3 and 2) and of the broker's
    internal topics (returned, to print)."""
    names = [spec.name for spec in topic_specs(settings)]
    seen: dict[str, tuple[int, str | None]] = {}

    def described() -> bool:
        seen.update(_replication_as_every_node_sees_it(admin, [*names, *INTERNAL_TOPICS]))
        return set(names) <= set(seen)

    wait_for(described, 30, "every node to serve the new topics")
    wrong = {name: seen.get(name) for name in names if seen.get(name) != (3, "2")}
    assert not wrong, f"queue topics not at RF 3 / min.insync.replicas 2: {wrong}"
    return {name: seen[name] for name in INTERNAL_TOPICS if name in seen}


def _group_coordinator(admin: AdminClient, settings: QueueSettings, state: BrokerState) -> int:
    """Index (into state.nodes) of the node coordinating the workers' consumer group: every worker's
    send_offsets_to_transaction goes to it, so its death is the hardest case for the clients (librdkafka caches
    the coordinator and must find the new one; see cv_queue/kafka/client/clients.py)."""
    (description,) = admin.describe_consumer_groups([settings.group_id]).values()
    coordinator = description.result().coordinator.id
    return next(i for i, node in enumerate(state.nodes) if node.node_id == coordinator)


@pytest.mark.cluster
@pytest.mark.chaos
def test_a_node_sigkilled_and_restarted_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    base_port, data_dir, state_file = free_port_block(width=3), tmp_path / "kafka", tmp_path / "cluster-state.json"
    settings = _replicated_settings()
    jobs = list(sample_jobs(BEFORE + WHILE_DOWN + AFTER, seed=83, prefix="nodekill"))
    job_ids = {j.job_id for j in jobs}
    try:
        state = start_cluster(3, base_port, data_dir, state_file, progress=False)
        conn = KafkaConnection(bootstrap_servers=state.bootstrap)
        admin = admin_client(conn)
        provision(admin, topic_specs(settings))
        internal = _check_replication(admin, settings)
        producer = JobProducer(conn, settings.topic_names.main)
        began = time.monotonic()
        producer.enqueue_batch(jobs[:BEFORE])
        fleet: Fleet = {}
        reader = OutcomeReader(conn, settings)
        reader.start()
        try:
            fleet = start_fleet(settings, state.bootstrap, tmp_path, LATENCY_MS, IN_FLIGHT, extra_env=WORKER_ENV)
            pids = {slot: p.pid for slot, p in fleet.items()}
            slot_of = {pid: slot for slot, pid in pids.items()}  # every pid a slot ever had
            stall_exits: list[str] = []

            def a_third_done_by_all() -> bool:
                outcomes = reader.snapshot()
                return len(outcomes) >= BEFORE // 3 and {o.worker_pid for o in outcomes} >= set(pids.values())

            wait_for(a_third_done_by_all, 120, "a third of the first batch settled, every worker having settled some")
            victim = _group_coordinator(admin, settings, state)
            controller = admin.describe_cluster().result().controller
            killed = kill_node(state_file, victim)
            killed_at, killed_wall_ms = time.monotonic(), int(time.time() * 1000)
            settled_at_kill = len(reader.settled())
            producer.enqueue_batch(jobs[BEFORE:BEFORE + WHILE_DOWN])  # acks=all with two in-sync replicas left
            enqueued_while_down_s = time.monotonic() - killed_at

            def slots_producing() -> dict[str, float]:
                """Per slot, seconds from the kill to its first result produced after it (by any of its pids)."""
                by_slot: dict[str, float] = {}
                for pid, seconds in first_new_result_s(reader.snapshot(), killed_wall_ms, killed_at).items():
                    slot = slot_of[pid]
                    by_slot[slot] = min(by_slot.get(slot, seconds), seconds)
                return by_slot

            def every_slot_producing() -> bool:
                # The supervisor's part (the fleet sensor's, under Dagster): a worker whose client call stalled
                # past its limit exits with EXIT_CLIENT_STALLED and is started again. Any other exit fails below.
                for slot, proc in fleet.items():
                    if proc.poll() == EXIT_CLIENT_STALLED:
                        stall_exits.append(slot)
                        fleet[slot] = spawn_worker(settings, slot, worker_log(tmp_path, slot), latency_ms=LATENCY_MS,
                                                   in_flight=IN_FLIGHT,
                                                   extra_env={"KAFKA_BOOTSTRAP_SERVERS": state.bootstrap,
                                                              **WORKER_ENV})
                        slot_of[fleet[slot].pid] = slot
                return set(slots_producing()) >= set(fleet)

            # Two in-sync replicas of everything remain: once the dead node's session expires, new leaders and
            # coordinators take over and every slot commits again before the node is back.
            try:
                wait_for(every_slot_producing, MAX_DEGRADED_RECOVERY_S, "every slot to commit again, the node down")
            except AssertionError:
                stalled = {slot: proc.pid for slot, proc in fleet.items() if slot not in slots_producing()}
                reports = [stalled_worker_report(pid, worker_log(tmp_path, slot)) for slot, pid in stalled.items()]
                raise AssertionError(f"slots {sorted(stalled)} did not commit again with node "
                                     f"{killed.node_id} down:\n" + "\n".join(reports)) from None
            recovered = slots_producing()
            restart_dead_nodes(state_file, progress=False)  # returns once the node is back and in sync
            back_s = time.monotonic() - killed_at
            settled_when_back = len(reader.settled())
            producer.enqueue_batch(jobs[BEFORE + WHILE_DOWN:])
            wait_for(lambda: reader.settled() >= job_ids, 180, "every job settled")
            total_s = time.monotonic() - began
            alive = {slot: p.poll() is None for slot, p in fleet.items()}
        finally:
            codes = stop_fleet(fleet)
            reader.stop()
        figures = tally(conn, settings, job_ids)
        assert_offsets_committed_to_end(conn, settings)
    finally:
        stop_cluster(state_file, progress=False)

    first, every = min(recovered.values(), default=float("nan")), max(recovered.values(), default=float("nan"))
    role = "the active controller" if controller is not None and controller.id == killed.node_id else "a broker"
    print(f"\nnode kill: {figures.line()} | node {killed.node_id} killed ({role}) at {settled_at_kill} settled, "
          f"{total_s:.1f}s in all | kill->first new result {first:.1f}s, kill->every worker producing {every:.1f}s, "
          f"{WHILE_DOWN} jobs enqueued while down in {enqueued_while_down_s:.1f}s, node back in sync "
          f"{back_s:.1f}s after the kill ({settled_when_back} settled by then) | internal topics (RF, min ISR): "
          f"{internal}")
    print("  kill->first new result per slot: "
          + ", ".join(f"{slot} {recovered.get(slot, float('nan')):.1f}s" for slot in fleet)
          + f" | workers restarted after a client stall (exit {EXIT_CLIENT_STALLED}): {stall_exits or 'none'}")

    assert all(alive.values()), f"workers died while the node was down (slot: alive): {alive}"
    assert codes == dict.fromkeys(fleet, 0), f"a SIGTERM is a clean stop: exit codes {codes}"
    assert not figures.lost and not figures.duplicated and not figures.unexpected, figures.line()
    assert figures.by_kind["dlq"] == figures.by_kind["parked"] == 0, \
        f"the handler never fails, so the node kill alone dead-lettered jobs: {figures.line()}"
