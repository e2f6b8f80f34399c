"""DLQ replay in Dagster: the `reprocess_dlq` job and the sensor that triggers it.

The sensor reads offsets only (sensor ticks time out at 60 s): the DLQ is partitioned by category, so the
end offsets of the auto-replay categories' partitions say how many letters arrived, and a timestamp
lookup says how many are past the cooldown. It asks for one run per batch, with a stable run_key.

Both trust the recorded DLQ layout, not the settings alone (kafka/fleet/dlq_layout.py): a tick whose settings would read
other partitions as the auto-replay categories fails, naming the recorded and configured layouts, and so does a replay
run. A letter whose category header is not an auto-replay category is moved to its own category's partitions by the run,
never replayed: invalid_payload letters are never replayed automatically, whatever their partition.
"""

import json
import random
import time
from datetime import UTC, datetime
from enum import Enum

import dagster as dg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import Field

from cv_queue.defs import tags
from cv_queue.defs.defaults import DEFAULTS
from cv_queue.defs.metrics_port import metrics_endpoint
from cv_queue.defs.resources import KafkaResource, Principal, QueueResource, access_failure
from cv_queue.defs.topics import skip_until_provisioned, unprovisioned
from cv_queue.errors import CATEGORY_ORDER, DEFAULT_REPLAY_CATEGORIES, ErrorCategory
from cv_queue.kafka.admin.lag import committed_offsets, end_offsets, offsets_before
from cv_queue.kafka.client.auth import KafkaAuthError, KafkaAuthorizationError, authorization_code, denied
from cv_queue.kafka.client.failures import FailureKind, TopicStateError
from cv_queue.kafka.client.transaction import TransactionFatalError, TransactionFencedError
from cv_queue.kafka.fleet.dlq_layout import DlqLayoutMismatchError, check_dlq_layout
from cv_queue.kafka.replay.replayer import replay_dead_letters
from cv_queue.kafka.replay.request import ReplayReport, ReplayRequest
from cv_queue.settings import QueueSettings

REPLAY_JOB = "reprocess_dlq"


# Launchpad choices. Dagster's config takes an Enum member's *name*, so the names are the lowercase words the
# CLI and the settings use; a typo is then refused before the run starts.
ReplayCategory = Enum("ReplayCategory", [(c.value, c.value) for c in CATEGORY_ORDER])


class RetryBackoff(Enum):
    exponential = "exponential"
    linear = "linear"
    constant = "constant"


class ReplayTarget(Enum):
    main = "main"
    other_topic = "other_topic"


class ReprocessConfig(dg.Config):
    """What to replay, and how hard to retry if the broker misbehaves. Every field has a default."""

    categories: list[ReplayCategory] = Field(
        default=[c.value for c in DEFAULT_REPLAY_CATEGORIES], validate_default=True,
        description="Error categories to replay: transient, rate_limited, permanent, invalid_payload.")
    error_classes: list[str] = Field(default=[], description="Only these error classes ([] = all).")
    min_age_seconds: float = Field(0.0, description="Leave letters younger than this for a later run.")
    max_messages: int = Field(10_000, description="Most letters handled by this run.")
    dry_run: bool = Field(False, description="Report what would happen; produce and commit nothing.")
    target: ReplayTarget = Field(ReplayTarget.main, description="main: the main topic; other_topic: target_topic.")
    target_topic: str = Field("", description="The topic to replay into when target is other_topic.")
    max_replays: int = Field(DEFAULTS.replay.max_replays,
                             description="Letters already replayed this often go to the parking lot.")
    max_retries: int = Field(DEFAULTS.replay.retry_max, description="Retries of this run's step when the broker "
                                                                    "fails.")
    retry_delay_seconds: float = Field(DEFAULTS.replay.retry_delay_s, description="Delay before the first retry.")
    retry_backoff: RetryBackoff = Field(RetryBackoff(DEFAULTS.replay.retry_backoff),
                                        description="How later retry delays grow.")
    retry_jitter: bool = Field(DEFAULTS.replay.retry_jitter, description="Randomise each retry delay by ±25%.")


def retry_wait_s(config: ReprocessConfig, retry_number: int, rng: random.Random | None = None) -> float:
    """The delay before retry `retry_number + 1` (retry_number is 0 on the first attempt)."""
    factor = {RetryBackoff.exponential: 2 ** retry_number, RetryBackoff.linear: retry_number + 1,
              RetryBackoff.constant: 1}[config.retry_backoff]
    delay = config.retry_delay_seconds * factor
    if config.retry_jitter:
        delay *= (rng or random).uniform(0.75, 1.25)
    return delay


def _target_topic(config: ReprocessConfig) -> str | None:
    if config.target == ReplayTarget.main:
        return None
    if not config.target_topic.strip():
        raise dg.Failure(description="target is other_topic but target_topic is empty: name the topic to replay into")
    return config.target_topic.strip()


def _report_metadata(report: ReplayReport) -> dict:
    rows = [dg.TableRecord({"category": c, "outcome": o, "letters": str(n)})
            for c, outcomes in sorted(report.by_category.items()) for o, n in sorted(outcomes.items())]
    return {
        "dry_run": report.dry_run,
        "scanned": report.scanned,
        "replayed": report.replayed,
        "parked": report.parked,
        "refiled": report.refiled,
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
    request = ReplayRequest(
        categories=[ErrorCategory(c.value) for c in config.categories], error_classes=config.error_classes,
        min_age_s=config.min_age_seconds, max_messages=config.max_messages, dry_run=config.dry_run,
        target_topic=_target_topic(config), max_replays=config.max_replays,
    )
    with metrics_endpoint(settings.metrics, settings.metrics.replay_port, context.log):
        return _replay(context, config, kafka, settings, request)


def _replay(context: dg.OpExecutionContext, config: ReprocessConfig, kafka: KafkaResource, settings: QueueSettings,
            request: ReplayRequest) -> dg.Output[dict]:
    def progress(report: ReplayReport) -> None:
        context.log.info(f"scanned {report.scanned}: replayed {report.replayed}, parked {report.parked}, "
                         f"skipped {report.skipped}")

    conn = kafka.check_access(Principal.REPLAYER)  # a refused login fails the run within seconds, not retried
    try:
        report = replay_dead_letters(conn, settings, request, on_progress=progress)
    except DlqLayoutMismatchError as exc:  # settings, not the broker: a retry would be refused the same way
        raise dg.Failure(description=str(exc)) from exc
    except (KafkaAuthError, KafkaAuthorizationError) as exc:  # e.g. denied the layout record: named, not retried
        raise access_failure(exc, Principal.REPLAYER) from exc
    except TopicStateError as exc:  # a missing target topic, checked before anything is read: a retry fails alike
        raise dg.Failure(description=str(exc), metadata={"cause": "TopicStateError"}, allow_retries=False) from exc
    except (KafkaException, TransactionFatalError, TransactionFencedError) as exc:
        if isinstance(exc, TransactionFatalError) and exc.kind != FailureKind.FATAL:
            # A write denied, or a topic gone, for replay.transaction_give_up_s: a retry would spin as long again.
            raise dg.Failure(description=str(exc), metadata={"cause": exc.kind.value}, allow_retries=False) from exc
        if authorization_code(exc) is not None:  # a missing ACL: retrying cannot grant it
            names = settings.topic_names
            used = f"{names.dlq}, {names.main}, {names.parked}, {settings.replay_group_id}, " \
                   f"{settings.replay_transactional_id}"
            raise access_failure(denied(exc, conn, used), Principal.REPLAYER) from exc
        # RetryRequested (not a RetryPolicy) so the limits come from this run's config.
        wait = retry_wait_s(config, context.retry_number)
        context.log.warning(f"replay failed ({exc}); retry {context.retry_number + 1}/{config.max_retries} "
                            f"in {wait:.1f}s")
        raise dg.RetryRequested(max_retries=config.max_retries, seconds_to_wait=wait) from exc
    context.log.info(f"{'DRY RUN: ' if report.dry_run else ''}replayed {report.replayed}, parked {report.parked}, "
                     f"refiled {report.refiled} (category header not asked for), skipped {report.skipped} of "
                     f"{report.scanned} in {report.seconds:.2f}s")
    return dg.Output(report.model_dump(mode="json"), metadata=_report_metadata(report))


@dg.job(name=REPLAY_JOB, tags={tags.ROLE: tags.ROLE_DLQ_REPLAY},
        executor_def=dg.in_process_executor,  # one op: a second process per run would only add start-up time
        description="Replay dead letters to the main topic (or park them), exactly once.")
def reprocess_dlq() -> None:
    reprocess_dead_letters()


class _Offsets:
    """The offsets one tick needs, per auto-replay DLQ partition (offset reads only: a tick must stay short)."""

    def __init__(self, admin: AdminClient, settings: QueueSettings, now_ms: int) -> None:
        topic = settings.topic_names.dlq
        policy = settings.replay
        self.partitions = settings.dlq_partitions(policy.auto_categories)
        self.ends = end_offsets(admin, topic, self.partitions)
        cooled = offsets_before(admin, topic, self.partitions, now_ms - int(policy.cooldown_s * 1000))
        # Letters past the cooldown end at the first younger one.
        self.eligible = {p: min(cooled[p], self.ends[p]) for p in self.partitions}
        committed = committed_offsets(admin, settings.replay_group_id, topic, self.partitions)
        self.committed = {p: committed[p] or 0 for p in self.partitions}


def _cap(ranges: dict[int, tuple[int, int]], budget: int) -> dict[int, tuple[int, int]]:
    batch = {}
    for p, (start, end) in sorted(ranges.items()):
        if budget <= 0:
            break
        upto = min(end, start + budget)
        batch[p] = (start, upto)
        budget -= upto - start
    return batch


def _key(prefix: str, batch: dict[int, tuple[int, int]]) -> str:
    return prefix + ";".join(f"{p}:{s}-{e}" for p, (s, e) in sorted(batch.items()))


def _finished_run(instance: dg.DagsterInstance, run_key: str | None) -> dg.DagsterRun | None:
    """The run a previous tick requested, once it has finished (None while it is pending or running)."""
    if not run_key:
        return None
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    return runs[0] if runs and runs[0].is_finished else None


@dg.sensor(job=reprocess_dlq, minimum_interval_seconds=DEFAULTS.replay.sensor_interval_s,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches the DLQ's offsets and triggers reprocess_dlq under the replay policy.")
def dlq_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, queue: QueueResource) -> dg.SensorResult:
    """One run per batch of new, cooled-down letters of the auto-replay categories.

    The cursor holds the offsets already requested and the last run_key. Letters beyond the cursor are
    new. Letters below it that the replay group has not committed were requested by a run that did not
    replay them (it failed, or stopped at its cap): once that run has finished they are requested again,
    under a run_key that names it, so a lasting failure cannot leave letters behind.
    """
    settings = queue.settings(kafka)
    admin = kafka.admin()  # one client for the whole tick
    if missing := unprovisioned(admin, settings):
        return skip_until_provisioned(missing)
    # The partitions below are the auto-replay categories' only under the recorded DLQ layout: other settings fail
    # the tick (DlqLayoutMismatchError names both) rather than request replays of other categories' letters.
    check_dlq_layout(kafka.connection(), admin, settings, record=False)
    policy = settings.replay
    state = json.loads(context.cursor) if context.cursor else {}
    requested: dict[str, int] = state.get("offsets", {})
    last_key: str | None = state.get("run_key")
    offsets = _Offsets(admin, settings, int(time.time() * 1000))
    categories = ", ".join(c.value for c in policy.auto_categories)

    new = {}
    for p in offsets.partitions:
        seen = requested.get(str(p), 0)
        if seen > offsets.ends[p]:  # the topic was recreated behind our back: start over
            seen = 0
        start = max(seen, offsets.committed[p])
        if offsets.eligible[p] > start:
            new[p] = (start, offsets.eligible[p])
    batch, prefix = _cap(new, policy.batch_size), "dlq:"
    if not batch:
        stalled = {p: (offsets.committed[p], end) for p in offsets.partitions
                   if (end := min(requested.get(str(p), 0), offsets.eligible[p])) > offsets.committed[p]}
        previous = _finished_run(context.instance, last_key)
        if stalled and previous is not None:
            batch, prefix = _cap(stalled, policy.batch_size), f"dlq-again-after-{previous.run_id}:"
    if not batch:
        cooling = sum(max(0, offsets.ends[p] - max(offsets.eligible[p], offsets.committed[p]))
                      for p in offsets.partitions)
        reason = f"no new dead letters in the auto-replay categories ({categories})"
        if cooling:
            reason += f"; offsets of up to {cooling} letter(s) are within the {policy.cooldown_s:.0f}s cooldown"
        if last_key and _finished_run(context.instance, last_key) is None:
            reason += f"; waiting for the replay run {last_key} to finish"
        return dg.SensorResult(skip_reason=dg.SkipReason(reason))

    run_key = _key(prefix, batch)
    cursor = {"offsets": {**requested, **{str(p): max(end, requested.get(str(p), 0))
                                          for p, (_, end) in batch.items()}}, "run_key": run_key}
    config = ReprocessConfig(categories=[c.value for c in policy.auto_categories], min_age_seconds=policy.cooldown_s,
                             max_messages=sum(e - s for s, e in batch.values()), max_replays=policy.max_replays,
                             max_retries=policy.retry_max, retry_delay_seconds=policy.retry_delay_s,
                             retry_backoff=RetryBackoff(policy.retry_backoff), retry_jitter=policy.retry_jitter)
    context.log.info(f"requesting a replay of DLQ offsets {batch} ({categories})")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            run_key=run_key,
            run_config=dg.RunConfig(ops={"reprocess_dead_letters": config}),
            tags={tags.ROLE: tags.ROLE_DLQ_REPLAY, "cv-queue/trigger": "dlq_sensor",
                  "cv-queue/requested-at": datetime.now(UTC).isoformat(timespec="seconds")},
        )],
        cursor=json.dumps(cursor),
    )
