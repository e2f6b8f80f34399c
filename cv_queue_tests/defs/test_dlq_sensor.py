"""The DLQ sensor evaluated the way the daemon evaluates it, on a real instance and broker."""

from collections import Counter

import dagster as dg
import pytest
from confluent_kafka import Producer

from cv_queue.defs.dlq import dlq_sensor, reprocess_dlq
from cv_queue.defs.resources import QueueResource
from cv_queue.defs.topics import topic_assets
from cv_queue.errors import ErrorCategory, InvalidPayloadError, TransientJobError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import committed_offsets
from cv_queue.kafka.fleet.dlq_layout import DlqLayoutMismatchError
from cv_queue.kafka.wire.envelope import now_ms
from cv_queue_tests.kafka.test_dlq_layout import job_ids, plant_letter
from cv_queue_tests.kafka.test_replay import _plant_letter
from cv_queue_tests.support import read_topic


def _tick(instance, resources, cursor=None):
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
        result = dlq_sensor(ctx)
    return result


def test_dlq_sensor_end_to_end(resources, instance, settings, conn):
    resources = {**resources, "queue": QueueResource(replay_cooldown_s=0)}
    unprovisioned = _tick(instance, resources)
    assert unprovisioned.run_requests == [] and "do not exist yet" in unprovisioned.skip_reason.skip_message
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success

    empty = _tick(instance, resources)
    assert empty.run_requests == [] and "no new dead letters" in empty.skip_reason.skip_message

    raw = Producer(conn.client_config())
    _plant_letter(raw, settings, b"bad-1", InvalidPayloadError("not_json"), ErrorCategory.INVALID_PAYLOAD, now_ms())
    raw.flush(10)
    invalid_only = _tick(instance, resources)
    assert invalid_only.run_requests == []  # invalid_payload letters are never replayed automatically

    for i in range(3):
        _plant_letter(raw, settings, f"t-{i}".encode(), TransientJobError("blip"), ErrorCategory.TRANSIENT,
                      now_ms() - 1000)
    raw.flush(10)
    first = _tick(instance, resources)
    [request] = first.run_requests
    again = _tick(instance, resources)  # same state, no cursor: the same request, same key
    assert [r.run_key for r in again.run_requests] == [request.run_key]
    config = request.run_config["ops"]["reprocess_dead_letters"]["config"]
    assert set(config["categories"]) == {"transient", "rate_limited"}
    assert config["max_messages"] == 3

    retick = _tick(instance, resources, cursor=first.cursor)
    assert retick.run_requests == [] and retick.skip_reason is not None

    run = reprocess_dlq.execute_in_process(run_config=request.run_config, resources=resources, instance=instance,
                                           tags=request.tags)
    assert run.success
    assert sorted(m.key() for m in read_topic(conn, settings.topic_names.main, expect=3)) == [b"t-0", b"t-1", b"t-2"]
    invalid_partition = settings.dlq_partition(ErrorCategory.INVALID_PAYLOAD, None)
    committed = committed_offsets(resources["kafka"].admin(), settings.replay_group_id, settings.topic_names.dlq,
                                  [invalid_partition])
    assert committed[invalid_partition] is None  # the invalid letter was not touched


def test_cooldown_holds_fresh_letters(resources, instance, settings, conn):
    resources = {**resources, "queue": QueueResource(replay_cooldown_s=3600)}
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    raw = Producer(conn.client_config())
    _plant_letter(raw, settings, b"fresh", TransientJobError("blip"), ErrorCategory.TRANSIENT, now_ms())
    raw.flush(10)
    held = _tick(instance, resources)
    assert held.run_requests == []
    assert "within the 3600s cooldown" in held.skip_reason.skip_message
    cooled = _tick(instance, {**resources, "queue": QueueResource(replay_cooldown_s=0)})
    assert len(cooled.run_requests) == 1


def _with_transient_letters(resources, instance, settings, conn, count: int, **queue) -> dict:
    """Topics provisioned and `count` transient letters in the DLQ; returns resources with the queue policy."""
    resources = {**resources, "queue": QueueResource(replay_cooldown_s=0, **queue)}
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    raw = Producer(conn.client_config())
    for i in range(count):
        _plant_letter(raw, settings, f"k{i}".encode(), TransientJobError("x"), ErrorCategory.TRANSIENT, now_ms())
    raw.flush(10)
    return resources


def test_batch_size_caps_a_request(resources, instance, settings, conn):
    resources = _with_transient_letters(resources, instance, settings, conn, 10, replay_batch_size=4)
    first = _tick(instance, resources)
    second = _tick(instance, resources, cursor=first.cursor)
    third = _tick(instance, resources, cursor=second.cursor)
    sizes = [r.run_requests[0].run_config["ops"]["reprocess_dead_letters"]["config"]["max_messages"]
             for r in (first, second, third)]
    assert sizes == [4, 4, 2]
    assert len({r.run_requests[0].run_key for r in (first, second, third)}) == 3


def test_letters_of_a_failed_replay_run_are_requested_again(resources, instance, settings, conn):
    resources = _with_transient_letters(resources, instance, settings, conn, 3)
    first = _tick(instance, resources)
    [request] = first.run_requests
    # The requested run fails (here: no topic named for other_topic) without replaying anything.
    bad_config = {"ops": {"reprocess_dead_letters": {"config": {"target": "other_topic"}}}}
    failed = reprocess_dlq.execute_in_process(run_config=bad_config, resources=resources, instance=instance,
                                              tags={**request.tags, "dagster/run_key": request.run_key},
                                              raise_on_error=False)
    assert not failed.success
    again = _tick(instance, resources, cursor=first.cursor)
    [retry] = again.run_requests
    assert retry.run_key.startswith(f"dlq-again-after-{failed.run_id}:") and retry.run_key != request.run_key
    done = reprocess_dlq.execute_in_process(run_config=retry.run_config, resources=resources, instance=instance,
                                            tags={**retry.tags, "dagster/run_key": retry.run_key})
    assert done.success
    assert len(read_topic(conn, settings.topic_names.main, expect=3)) == 3
    settled = _tick(instance, resources, cursor=again.cursor)
    assert settled.run_requests == []  # everything requested was replayed: nothing left to ask for


def test_sensor_triggered_replays_take_their_retry_policy_from_the_replay_settings(resources, instance, settings,
                                                                                     conn):
    policy = {"replay_retry_max": 7, "replay_retry_delay_s": 1.5, "replay_retry_backoff": "linear",
              "replay_retry_jitter": False}
    resources = _with_transient_letters(resources, instance, settings, conn, 2, **policy)
    [request] = _tick(instance, resources).run_requests
    config = request.run_config["ops"]["reprocess_dead_letters"]["config"]
    assert (config["max_retries"], config["retry_delay_seconds"], config["retry_backoff"], config["retry_jitter"]) \
        == (7, 1.5, "linear", False)
    assert dg.validate_run_config(reprocess_dlq, request.run_config)


def _step_failure(result: dg.ExecuteInProcessResult) -> str:
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    data = event.event_specific_data
    return data.user_failure_data.description if data.user_failure_data else data.error.message


def test_an_invalid_payload_letter_in_a_transient_partition_is_moved_never_replayed(resources, instance, settings,
                                                                                     conn):
    resources = {**resources, "queue": QueueResource(replay_cooldown_s=0)}
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success
    transient_p = settings.dlq_partition(ErrorCategory.TRANSIENT, None)
    invalid_p = settings.dlq_partition(ErrorCategory.INVALID_PAYLOAD, None)
    good, bad = sample_jobs(2, seed=31, prefix="sensor")
    raw = Producer(conn.client_config())
    plant_letter(raw, settings, good, TransientJobError("blip"), ErrorCategory.TRANSIENT, transient_p)
    # Filed where transient letters go, but its header says invalid_payload (a worker with other settings).
    plant_letter(raw, settings, bad, InvalidPayloadError("not_json"), ErrorCategory.INVALID_PAYLOAD, transient_p)
    raw.flush(10)

    first = _tick(instance, resources)
    [request] = first.run_requests
    run = reprocess_dlq.execute_in_process(run_config=request.run_config, resources=resources, instance=instance,
                                           tags=request.tags)
    assert run.success
    assert job_ids(read_topic(conn, settings.topic_names.main, expect=1)) == Counter({good.job_id: 1})
    report = run.output_for_node("reprocess_dead_letters")
    assert (report["replayed"], report.get("refiled")) == (1, 1)
    dlq = read_topic(conn, settings.topic_names.dlq, expect=3)
    assert sorted(m.partition() for m in dlq if m.key() == bad.key) == [transient_p, invalid_p]  # moved once
    admin = resources["kafka"].admin()
    committed = committed_offsets(admin, settings.replay_group_id, settings.topic_names.dlq, [transient_p, invalid_p])
    assert committed == {transient_p: 2, invalid_p: None}  # nothing left behind; its new place untouched

    settled = _tick(instance, resources, cursor=first.cursor)
    assert settled.run_requests == []  # the sensor never looks at invalid_payload letters, wherever they came from
    assert job_ids(read_topic(conn, settings.topic_names.main, idle_s=1.0)) == Counter({good.job_id: 1})


def test_a_tick_and_a_replay_run_with_another_dlq_layout_are_refused(resources, instance, settings, conn,
                                                                     monkeypatch):
    resources = {**resources, "queue": QueueResource(replay_cooldown_s=0)}
    assert dg.materialize(topic_assets, resources=resources, instance=instance).success  # records 1 per category
    job = next(sample_jobs(1, seed=32, prefix="sensor"))
    raw = Producer(conn.client_config())
    plant_letter(raw, settings, job, TransientJobError("blip"), ErrorCategory.TRANSIENT,
                 settings.dlq_partition(ErrorCategory.TRANSIENT, None))
    plant_letter(raw, settings, next(sample_jobs(1, seed=33, prefix="bad")), InvalidPayloadError("not_json"),
                 ErrorCategory.INVALID_PAYLOAD, settings.dlq_partition(ErrorCategory.INVALID_PAYLOAD, None))
    raw.flush(10)
    [request] = _tick(instance, resources).run_requests

    # Raised afterwards: at 2 per category the auto-replay categories would be partitions 0-3, the invalid one too.
    monkeypatch.setenv("CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY", "2")
    with pytest.raises(DlqLayoutMismatchError, match="CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY=1"):
        _tick(instance, resources)
    run = reprocess_dlq.execute_in_process(run_config=request.run_config, resources=resources, instance=instance,
                                           tags=request.tags, raise_on_error=False)
    assert not run.success
    message = _step_failure(run)
    assert "CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY=1" in message and "2 DLQ partition(s)" in message
    materialized = dg.materialize(topic_assets, resources=resources, instance=instance, raise_on_error=False)
    assert not materialized.success
    assert "CVQ_TOPICS__DLQ_PARTITIONS_PER_CATEGORY=1" in _step_failure(materialized)

    assert read_topic(conn, settings.topic_names.main, idle_s=1.0) == []  # nothing replayed
    admin = resources["kafka"].admin()
    assert set(committed_offsets(admin, settings.replay_group_id, settings.topic_names.dlq,
                                 list(range(4))).values()) == {None}
