"""Queue health: depth observations and WARN/ERROR asset checks, evaluated by `queue_depth_sensor` every tick.

Checks (thresholds in CVQ_ALERTS__*; a check fails when its figure is *above* a threshold):
- `dlq_depth_<category>` on the DLQ asset: letters of that category the replay group has not moved yet;
- `parked_depth` on the parking-lot asset: offsets retained in the parking lot (letters waiting for a human);
- `consumer_lag` on the main-topic asset: the worker group's lag summed over partitions;
- `llm_spend` on the results asset: what the fleet spent in the current llm.spend window (the spend ledger), WARN
  from llm.spend.warn_at of llm.spend.limit, ERROR at the limit (when workers pause intake); passes without a limit.

The sensor reads offsets only (a tick has 60 s), records observations and check evaluations on the topic assets,
and sends a check that enters (or leaves) a failing state at CVQ_ALERTS__NOTIFY_SEVERITY or worse to the
notifiers, once per change: its cursor remembers each check's last state. The same checks can be executed from
the UI (`queue_health`), reading the same offsets.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from cv_queue.defs.alerts_resource import AlertsResource
from cv_queue.defs.notify import Alert
from cv_queue.defs.resources import KafkaResource, QueueResource
from cv_queue.defs.topics import asset_key, skip_until_provisioned, unprovisioned
from cv_queue.errors import CATEGORY_ORDER, ErrorCategory
from cv_queue.kafka.admin.lag import REQUEST_TIMEOUT_S, PartitionLag, end_offsets, group_lag, partition_count
from cv_queue.kafka.admin.topics import TopicRole
from cv_queue.kafka.fleet.dlq_layout import DlqLayout, recorded_dlq_layout
from cv_queue.kafka.fleet.spend_ledger import FleetSpend, read_fleet_spend
from cv_queue.settings import KafkaConnection, QueueSettings

CONSUMER_LAG = "consumer_lag"
PARKED_DEPTH = "parked_depth"
LLM_SPEND = "llm_spend"
#: The spend ledger's read gets at most this much of a sensor tick (60 s in all).
SPEND_READ_TIMEOUT_S = 15.0
SEVERITY_RANK = {"OK": 0, "WARN": 1, "ERROR": 2}


def dlq_check_name(category: ErrorCategory) -> str:
    return f"dlq_depth_{category.value}"


CHECK_SPECS = [
    *(dg.AssetCheckSpec(dlq_check_name(c), asset=asset_key(TopicRole.DLQ),
                        description=f"{c.value} dead letters not yet replayed, against the DLQ depth thresholds.")
      for c in CATEGORY_ORDER),
    dg.AssetCheckSpec(PARKED_DEPTH, asset=asset_key(TopicRole.PARKED),
                      description="Letters in the parking lot (offsets), against the parked depth thresholds."),
    dg.AssetCheckSpec(CONSUMER_LAG, asset=asset_key(TopicRole.MAIN),
                      description="The worker group's lag on the main topic, against the consumer lag thresholds."),
    dg.AssetCheckSpec(LLM_SPEND, asset=asset_key(TopicRole.RESULTS),
                      description="The fleet's LLM spend in the current llm.spend window, against llm.spend.limit "
                                  "(WARN from llm.spend.warn_at of it; ERROR at the limit, when intake pauses)."),
]


@dataclass(frozen=True)
class QueueDepths:
    """One tick's offset reading."""

    main: list[PartitionLag]
    retry: list[PartitionLag]
    interactive: list[PartitionLag]
    dlq: list[PartitionLag]  # lag of the replay group: letters not yet replayed (or parked)
    parked: dict[int, int]  # retained offsets per partition
    # Which DLQ partitions hold which category: the recorded layout, not the settings', which could differ.
    dlq_layout: DlqLayout
    # The fleet's spend in the current llm.spend window (None: no limit set, or no ledger yet), and that window.
    spend: FleetSpend | None = None
    spend_window: int = 0
    spend_error: str | None = None  # the ledger could not be read: the spend check fails, the other checks go on

    def dlq_by_category(self) -> dict[ErrorCategory, int]:
        depth = dict.fromkeys(CATEGORY_ORDER, 0)
        for x in self.dlq:
            label = self.dlq_layout.label(x.partition)
            if label in depth:  # a partition past the recorded blocks holds no category's letters
                depth[ErrorCategory(label)] += x.lag
        return depth


def _retained(admin: AdminClient, topic: str) -> dict[int, int]:
    """Offsets between the earliest retained record and the end, per partition (an upper bound on records:
    transaction markers take offsets too)."""
    partitions = list(range(partition_count(admin, topic)))
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.earliest() for p in partitions},
                                 request_timeout=REQUEST_TIMEOUT_S)
    earliest = {tp.partition: fut.result().offset for tp, fut in futures.items()}
    ends = end_offsets(admin, topic, partitions)
    return {p: max(0, ends[p] - earliest[p]) for p in partitions}


def read_queue_depths(conn: KafkaConnection, admin: AdminClient, settings: QueueSettings) -> QueueDepths:
    names = settings.topic_names
    return QueueDepths(main=group_lag(admin, settings.group_id, names.main),
                       retry=group_lag(admin, settings.group_id, names.retry),
                       interactive=group_lag(admin, settings.group_id, names.interactive),
                       dlq=group_lag(admin, settings.replay_group_id, names.dlq),
                       parked=_retained(admin, names.parked),
                       dlq_layout=recorded_dlq_layout(conn, admin, settings),
                       **_spend(conn, settings))


def _spend(conn: KafkaConnection, settings: QueueSettings) -> dict:
    if settings.llm.spend.limit is None:
        return {}
    window = settings.llm.spend.window_start(time.time())
    try:
        return {"spend": read_fleet_spend(conn, settings, window, timeout_s=SPEND_READ_TIMEOUT_S),
                "spend_window": window}
    except Exception as exc:  # the broker, ACLs, a huge ledger: one check fails, the tick goes on
        return {"spend_window": window, "spend_error": f"{type(exc).__name__}: {exc}"}


def grade(value: int, warn: int, error: int) -> str:
    """OK, WARN or ERROR: a figure above a threshold fails at that threshold's severity."""
    return "ERROR" if value > error else "WARN" if value > warn else "OK"


def _graded(key: dg.AssetKey, name: str, state: str, description: str, metadata: dict) -> dg.AssetCheckEvaluation:
    """A check's evaluation in state OK, WARN or ERROR (metadata: value, warn_above, error_above, and any more)."""
    return dg.AssetCheckEvaluation(
        asset_key=key, check_name=name, passed=state == "OK",
        severity=dg.AssetCheckSeverity.WARN if state == "WARN" else dg.AssetCheckSeverity.ERROR,
        description=description, metadata=metadata)


def _evaluation(key: dg.AssetKey, name: str, value: int, warn: int, error: int, what: str,
                extra: dict | None = None) -> dg.AssetCheckEvaluation:
    state = grade(value, warn, error)
    limit = error if state == "ERROR" else warn
    description = f"{what}: {value}" + ("" if state == "OK" else f", above the {state} threshold {limit}")
    return _graded(key, name, state, description,
                   {"value": value, "warn_above": warn, "error_above": error, **(extra or {})})


def evaluate(depths: QueueDepths, settings: QueueSettings, alerts: AlertsResource) -> list[dg.AssetCheckEvaluation]:
    dlq_key = asset_key(TopicRole.DLQ)
    evaluations = [
        _evaluation(dlq_key, dlq_check_name(category), depth, alerts.dlq_depth_warn, alerts.dlq_depth_error,
                    f"{category.value} dead letters not yet replayed",
                    {"partitions": dg.MetadataValue.json(depths.dlq_layout.partitions_of(category.value))})
        for category, depth in depths.dlq_by_category().items()
    ]
    evaluations.append(_evaluation(asset_key(TopicRole.PARKED), PARKED_DEPTH, sum(depths.parked.values()),
                                   alerts.parked_depth_warn, alerts.parked_depth_error, "parked letter offsets"))
    # Both lanes' jobs wait for the same workers: the lag is theirs together.
    evaluations.append(_evaluation(
        asset_key(TopicRole.MAIN), CONSUMER_LAG, sum(x.lag for x in [*depths.main, *depths.interactive]),
        alerts.consumer_lag_warn, alerts.consumer_lag_error, f"lag of {settings.group_id} (main and interactive)",
        {"lag_by_partition": dg.MetadataValue.json({str(x.partition): x.lag for x in depths.main}),
         "interactive_lag_by_partition": dg.MetadataValue.json({str(x.partition): x.lag
                                                                for x in depths.interactive})}))
    evaluations.append(spend_evaluation(depths, settings))
    return evaluations


def spend_evaluation(depths: QueueDepths, settings: QueueSettings) -> dg.AssetCheckEvaluation:
    key, policy = asset_key(TopicRole.RESULTS), settings.llm.spend
    if policy.limit is None:
        return _graded(key, LLM_SPEND, "OK", "no spend limit (llm.spend.limit is unset)", {"value": 0.0})
    warn_at = policy.warn_at * policy.limit
    thresholds = {"warn_above": warn_at, "error_above": policy.limit}
    if depths.spend_error is not None:
        return _graded(key, LLM_SPEND, "ERROR", f"the spend ledger could not be read: {depths.spend_error}",
                       {"value": -1.0, **thresholds})
    spent = depths.spend.spent if depths.spend is not None else 0.0
    paused = depths.spend is not None and depths.spend.paused
    # ERROR once a worker paused: what is left of the window is less than a job may cost.
    state = "ERROR" if spent >= policy.limit or paused else "WARN" if spent >= warn_at else "OK"
    window = datetime.fromtimestamp(depths.spend_window, UTC)
    ends = datetime.fromtimestamp(depths.spend_window + policy.window_s, UTC)
    description = f"spent {spent:.4f} of {policy.limit:g} in the window from {window.isoformat()}"
    if state == "ERROR":
        description += f": intake paused until {ends.isoformat()}"
    elif state == "WARN":
        description += f", past the WARN share {policy.warn_at:g}"
    return _graded(key, LLM_SPEND, state, description,
                   {"value": round(spent, 6), **thresholds, "intake_paused": paused,
                    "window_start": window.isoformat(), "window_end": ends.isoformat()})


def state_of(evaluation: dg.AssetCheckEvaluation) -> str:
    return "OK" if evaluation.passed else evaluation.severity.value


def check_alerts(previous: dict[str, str], evaluations: list[dg.AssetCheckEvaluation],
                 notify_severity: str) -> list[Alert]:
    """Alerts for checks whose state changed and whose old or new state is at `notify_severity` or worse.

    A check seen for the first time counts as having been OK, so a queue already unhealthy when the sensor
    starts is reported once."""
    floor = SEVERITY_RANK[notify_severity]
    alerts = []
    for ev in evaluations:
        name, now = ev.check_name, state_of(ev)
        before = previous.get(name, "OK")
        if now == before or max(SEVERITY_RANK[now], SEVERITY_RANK[before]) < floor:
            continue
        verb = "resolved" if SEVERITY_RANK[now] < floor else "failing"
        alerts.append(Alert(kind="asset_check", severity=now, asset=ev.asset_key.to_user_string(), check=name,
                            value=ev.metadata["value"].value,
                            threshold=ev.metadata["error_above" if now == "ERROR" else "warn_above"].value,
                            summary=f"check {name} on {ev.asset_key.to_user_string()} {verb} ({now}): "
                                    f"{ev.description}"))
    return alerts


def _observations(depths: QueueDepths, settings: QueueSettings) -> list[dg.AssetObservation]:
    events = []
    for role, lags, group in ((TopicRole.MAIN, depths.main, settings.group_id),
                              (TopicRole.INTERACTIVE, depths.interactive, settings.group_id),
                              (TopicRole.RETRY, depths.retry, settings.group_id),
                              (TopicRole.DLQ, depths.dlq, settings.replay_group_id)):
        metadata: dict[str, int | str] = {"depth": sum(x.lag for x in lags), "group": group}
        for x in lags:
            label = f"{depths.dlq_layout.label(x.partition)}_p{x.partition}" if role == TopicRole.DLQ \
                else f"p{x.partition}"
            metadata[f"depth_{label}"] = x.lag
        events.append(dg.AssetObservation(asset_key=asset_key(role), metadata=metadata))
    events.append(dg.AssetObservation(asset_key=asset_key(TopicRole.PARKED),
                                      metadata={"depth": sum(depths.parked.values())}))
    return events


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Records queue and DLQ depth as asset observations and evaluates the queue health checks "
                       "(offsets only); checks entering or leaving a failing state are sent to the notifiers.")
def queue_depth_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, queue: QueueResource,
                       alerts: AlertsResource) -> dg.SensorResult:
    settings = queue.settings(kafka)
    admin = kafka.admin()
    if missing := unprovisioned(admin, settings):
        return skip_until_provisioned(missing)
    depths = read_queue_depths(kafka.connection(), admin, settings)
    evaluations = evaluate(depths, settings, alerts)
    previous = json.loads(context.cursor) if context.cursor else {}
    for alert in check_alerts(previous, evaluations, alerts.notify_severity.value):
        context.log.warning(alert.summary)
        alerts.notify(alert, context.log)
    return dg.SensorResult(asset_events=[*_observations(depths, settings), *evaluations],
                           cursor=json.dumps({ev.check_name: state_of(ev) for ev in evaluations}))


@dg.multi_asset_check(specs=CHECK_SPECS, name="queue_health",
                      description="The queue health checks, on demand (the depth sensor also evaluates them).")
def queue_health(kafka: KafkaResource, queue: QueueResource, alerts: AlertsResource) -> Iterator[dg.AssetCheckResult]:
    settings = queue.settings(kafka)
    for ev in evaluate(read_queue_depths(kafka.connection(), kafka.admin(), settings), settings, alerts):
        yield dg.AssetCheckResult(asset_key=ev.asset_key, check_name=ev.check_name, passed=ev.passed,
                                  severity=ev.severity, description=ev.description, metadata=ev.metadata)
