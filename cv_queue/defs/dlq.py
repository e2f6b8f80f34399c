"""DLQ replay in Dagster: the `reprocess_dlq` job and the sensor that triggers it.

The sensor reads offsets only (sensor ticks time out at 60 s): the DLQ is partitioned by category, so the
end offsets of the auto-replay categories' partitions say how many letters arrived, and a timestamp
lookup says how many are past the cooldown. It asks for one run per batch, with a stable run_key.
"""

import json
import random
import time
from datetime import UTC, datetime

import dagster as dg
from confluent_kafka import KafkaException
from pydantic import Field

from cv_queue.defs import tags
from cv_queue.defs.resources import KafkaResource, QueueResource
from cv_queue.defs.topics import skip_until_provisioned, unprovisioned
from cv_queue.errors import ErrorCategory
from cv_queue.kafka.lag import committed_offsets, end_offsets, offsets_before
from cv_queue.kafka.replay import ReplayReport, ReplayRequest, replay_dead_letters
from cv_queue.settings import QueueSettings

REPLAY_JOB = "reprocess_dlq"


class ReprocessConfig(dg.Config):
    """What to replay, and how hard to retry if the broker misbehaves. Every field has a default."""

    categories: list[str] = Field(
        default=[ErrorCategory.TRANSIENT.value, ErrorCategory.RATE_LIMITED.value],
        description="Error categories to replay: transient, rate_limited, permanent, invalid_payload.")
    error_classes: list[str] = Field(default=[], description="Only these error classes ([] = all).")
    min_age_seconds: float = Field(0.0, description="Leave letters younger than this for a later run.")
    max_messages: int = Field(10_000, description="Most letters handled by this run.")
    dry_run: bool = Field(False, description="Report what would happen; produce and commit nothing.")
    target: str = Field("main", description="'main' for the main topic, or a topic name to replay into.")
    max_replays: int = Field(3, description="Letters already replayed this often go to the parking lot.")
    max_retries: int = Field(3, description="Retries of this run's step when the broker fails.")
    retry_delay_seconds: float = Field(5.0, description="Delay before the first retry.")
    retry_backoff: str = Field("exponential", description="'exponential', 'linear' or 'constant'.")
    retry_jitter: bool = Field(True, description="Randomise each retry delay by ±25%.")


def retry_wait_s(config: ReprocessConfig, retry_number: int, rng: random.Random | None = None) -> float:
    """The delay before retry `retry_number + 1` (retry_number is 0 on the first attempt)."""
    factor = {"exponential": 2 ** retry_number, "linear": retry_number + 1, "constant": 1}.get(config.retry_backoff)
    if factor is None:
        raise dg.Failure(description=f"retry_backoff must be exponential, linear or constant, "
                                     f"not {config.retry_backoff!r}")
    delay = config.retry_delay_seconds * factor
    if config.retry_jitter:
        delay *= (rng or random).uniform(0.75, 1.25)
    return delay


def _report_metadata(report: ReplayReport) -> dict:
    rows = [dg.TableRecord({"category": c, "outcome": o, "letters": str(n)})
            for c, outcomes in sorted(report.by_category.items()) for o, n in sorted(outcomes.items())]
    return {
        "dry_run": report.dry_run,
        "scanned": report.scanned,
        "replayed": report.replayed,
        "parked": report.parked,
        "skipped": report.skipped,
        "by_category": dg.MetadataValue.table(
            records=rows, schema=dg.TableSchema(columns=[dg.TableColumn(c, "string")
                                                         for c in ("category", "outcome", "letters")])),
        "left_too_young": dg.MetadataValue.json({str(k): v for k, v in report.left_too_young.items()}),
        "letters_per_s": round(report.rate_per_s, 1),
    }


@dg.op(tags={tags.ROLE: tags.ROLE_DLQ_REPLAY})
def reprocess_dead_letters(context: dg.OpExecutionContext, config: ReprocessConfig, kafka: KafkaResource,
                           queue: QueueResource) -> dg.Output[dict]:
    settings = queue.settings(kafka)
    try:
        categories = [ErrorCategory(c) for c in config.categories]
    except ValueError as exc:
        raise dg.Failure(description=f"{exc}; categories are {[c.value for c in ErrorCategory]}") from exc
    request = ReplayRequest(
        categories=categories, error_classes=config.error_classes, min_age_s=config.min_age_seconds,
        max_messages=config.max_messages, dry_run=config.dry_run,
        target_topic=None if config.target == "main" else config.target, max_replays=config.max_replays,
    )

    def progress(report: ReplayReport) -> None:
        context.log.info(f"scanned {report.scanned}: replayed {report.replayed}, parked {report.parked}, "
                         f"skipped {report.skipped}")

    try:
        report = replay_dead_letters(kafka.connection(), settings, request, on_progress=progress)
    except KafkaException as exc:
        # RetryRequested (not a RetryPolicy) so the limits come from this run's config.
        wait = retry_wait_s(config, context.retry_number)
        context.log.warning(f"replay failed ({exc}); retry {context.retry_number + 1}/{config.max_retries} "
                            f"in {wait:.1f}s")
        raise dg.RetryRequested(max_retries=config.max_retries, seconds_to_wait=wait) from exc
    context.log.info(f"{'DRY RUN: ' if report.dry_run else ''}replayed {report.replayed}, parked {report.parked}, "
                     f"skipped {report.skipped} of {report.scanned} in {report.seconds:.2f}s")
    return dg.Output(report.model_dump(mode="json"), metadata=_report_metadata(report))


@dg.job(name=REPLAY_JOB, tags={tags.ROLE: tags.ROLE_DLQ_REPLAY},
        executor_def=dg.in_process_executor,  # one op: a second process per run would only add start-up time
        description="Replay dead letters to the main topic (or park them), exactly once.")
def reprocess_dlq() -> None:
    reprocess_dead_letters()


def _eligible_ranges(kafka: KafkaResource, settings: QueueSettings, cursor: dict[str, int],
                     now_ms: int) -> tuple[dict[int, tuple[int, int]], dict[int, int], int]:
    """Per auto-replay partition: (start, end) of letters past the cooldown and beyond the cursor.

    Also returns the new end offsets seen and how many letters are still cooling down.
    """
    admin = kafka.admin()
    topic = settings.topic_names.dlq
    policy = settings.replay
    partitions = settings.dlq_partitions(policy.auto_categories)
    ends = end_offsets(admin, topic, partitions)
    cooled = offsets_before(admin, topic, partitions, now_ms - int(policy.cooldown_s * 1000))
    committed = committed_offsets(admin, settings.replay_group_id, topic, partitions)
    ranges, cooling = {}, 0
    for p in partitions:
        seen = cursor.get(str(p), 0)
        if seen > ends[p]:  # the topic was recreated behind our back: start over
            seen = 0
        start = max(seen, committed[p] or 0)
        end = min(cooled[p], ends[p])
        if end > start:
            ranges[p] = (start, end)
        cooling += max(0, ends[p] - max(end, start))
    return ranges, ends, cooling


@dg.sensor(job=reprocess_dlq, minimum_interval_seconds=QueueSettings().replay.sensor_interval_s,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches the DLQ's offsets and triggers reprocess_dlq under the replay policy.")
def dlq_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, queue: QueueResource) -> dg.SensorResult:
    settings = queue.settings(kafka)
    if missing := unprovisioned(kafka, settings):
        return skip_until_provisioned(missing)
    policy = settings.replay
    cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    now_ms = int(time.time() * 1000)
    ranges, _, cooling = _eligible_ranges(kafka, settings, cursor, now_ms)
    categories = ", ".join(c.value for c in policy.auto_categories)
    if not ranges:
        reason = f"no new dead letters in the auto-replay categories ({categories})"
        if cooling:
            reason += f"; offsets of up to {cooling} letter(s) are within the {policy.cooldown_s:.0f}s cooldown"
        return dg.SensorResult(skip_reason=dg.SkipReason(reason))
    budget = policy.batch_size
    batch: dict[int, tuple[int, int]] = {}
    for p, (start, end) in sorted(ranges.items()):
        if budget <= 0:
            break
        upto = min(end, start + budget)
        batch[p] = (start, upto)
        budget -= upto - start
    new_cursor = {**cursor, **{str(p): end for p, (_, end) in batch.items()}}
    run_key = "dlq:" + ";".join(f"{p}:{s}-{e}" for p, (s, e) in sorted(batch.items()))
    config = ReprocessConfig(categories=[c.value for c in policy.auto_categories], min_age_seconds=policy.cooldown_s,
                             max_messages=sum(e - s for s, e in batch.values()), max_replays=policy.max_replays)
    context.log.info(f"requesting a replay of DLQ offsets {batch} ({categories})")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            run_key=run_key,
            run_config=dg.RunConfig(ops={"reprocess_dead_letters": config}),
            tags={tags.ROLE: tags.ROLE_DLQ_REPLAY, "cv-queue/trigger": "dlq_sensor",
                  "cv-queue/requested-at": datetime.now(UTC).isoformat(timespec="seconds")},
        )],
        cursor=json.dumps(new_cursor),
    )
