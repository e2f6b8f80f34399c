"""`cv-queue enqueue`, `cv-queue worker`, `cv-queue status`."""

import argparse
import json
import logging
import random
import sys
import threading
from pathlib import Path

from cv_queue.cli.context import connection, settings
from cv_queue.cli.signals import call_on_stop_signals
from cv_queue.cli.tables import render, section
from cv_queue.errors import InvalidPayloadError
from cv_queue.evaluation.handler import load_handler
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.lag import end_offsets, group_lag, partition_count
from cv_queue.kafka.client.auth import authorization_code, denied
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.client.failures import FailureKind
from cv_queue.kafka.client.producer import EnqueueError, JobProducer, RawRecord, deliveries_by_partition
from cv_queue.kafka.fleet.dlq_layout import DlqLayout, recorded_dlq_layout
from cv_queue.kafka.metrics import MetricsServer, start_metrics_server
from cv_queue.kafka.worker.partition_worker import PartitionWorker
from cv_queue.lanes import Lane
from cv_queue.messages import EvaluationJob, decode_job
from cv_queue.settings import QueueSettings, Slot

# Records that are not jobs, one per way a payload can be wrong; `enqueue --invalid` sends these.
INVALID_SAMPLES: list[tuple[str, bytes | None]] = [
    ("not_json", b"this is not json"),
    ("not_object", b"[1, 2, 3]"),
    ("wrong_types", b'{"job_id": 42, "cv_id": [], "project_id": "p", "cv_text": 1}'),
    ("missing_fields", b'{"job_id": "x"}'),
    ("null_value", None),
    ("bad_utf8", b'{"job_id": "\xff\xfe"}'),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    enq = sub.add_parser("enqueue", help="send sample jobs (--count) or jobs from a JSON-lines file (--file)")
    src = enq.add_mutually_exclusive_group(required=True)
    src.add_argument("--count", type=int, help="number of sample jobs")
    src.add_argument("--file", type=Path, help="one EvaluationJob JSON per line; all are checked before any is sent")
    enq.add_argument("--seed", type=int, default=None,
                     help="sample generator seed, for a repeatable batch (default: random, so every run sends new "
                     "job ids)")
    enq.add_argument("--prefix", default="job", help="job_id prefix of sample jobs")
    enq.add_argument("--transient", type=float, default=0.0,
                     help="fraction of sample jobs that fail transiently twice (simulated handler)")
    enq.add_argument("--permanent", type=float, default=0.0, help="fraction that fail permanently")
    enq.add_argument("--until-replay", type=float, default=0.0,
                     help="fraction that fail until replayed from the DLQ once")
    enq.add_argument("--invalid", type=int, default=0, help="also send this many invalid records")
    enq.add_argument("--lane", choices=[lane.value for lane in Lane], default=Lane.BULK.value,
                     help="bulk (the main topic, the default) or interactive (its own topic: started first when the "
                     "provider's budget is tight)")
    enq.set_defaults(func=cmd_enqueue)

    work = sub.add_parser("worker", help="run one partition-pair worker in the foreground")
    work.add_argument("--partitions", required=True, help="the slot, e.g. 0,1 or 0-1")
    work.add_argument("--handler", default=None, help="override CVQ_WORKER__HANDLER (module:attr)")
    work.add_argument("--handler-options", default=None, help="JSON object of handler keyword arguments")
    work.add_argument("--max-in-flight", type=int, default=None, help="override CVQ_WORKER__MAX_IN_FLIGHT")
    work.add_argument("--metrics-port", type=int, default=None,
                      help="serve Prometheus metrics on this port (0 = any free port; the URL is logged), on "
                           "CVQ_METRICS__HOST")
    work.set_defaults(func=cmd_worker)

    status = sub.add_parser("status", help="end and committed offsets, lag per partition, DLQ depth")
    status.set_defaults(func=cmd_status)


def _labels_for(args: argparse.Namespace) -> dict[int, dict[str, str]]:
    rng = random.Random(args.seed + 1)
    labels: dict[int, dict[str, str]] = {}
    for i in range(args.count):
        draw = rng.random()
        if draw < args.transient:
            labels[i] = {"simulate": "transient:2"}
        elif draw < args.transient + args.permanent:
            labels[i] = {"simulate": "permanent"}
        elif draw < args.transient + args.permanent + args.until_replay:
            labels[i] = {"simulate": "transient-until-replay"}
    return labels


def read_jobs_file(path: Path) -> list[EvaluationJob]:
    """Every line must be a valid job; otherwise raise with every bad line listed (nothing is sent)."""
    jobs, problems = [], []
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                jobs.append(decode_job(line.rstrip(b"\r\n")))
            except InvalidPayloadError as exc:
                problems.append(f"  line {number}: {exc}")
    if problems:
        raise ValueError(f"{path}: {len(problems)} invalid line(s); nothing was sent:\n" + "\n".join(problems[:50]))
    return jobs


def cmd_enqueue(args: argparse.Namespace) -> int:
    qs = settings(args)
    if args.file is not None:
        try:
            jobs = read_jobs_file(args.file)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        if args.seed is None:  # without a seed, two runs must not send the same job ids (they would be duplicates)
            args.seed = random.SystemRandom().randrange(2**31)
        jobs = list(sample_jobs(args.count, args.seed, args.prefix, _labels_for(args)))
    conn = connection(args)  # checks the login first: exit 6 within seconds, not a 60 s flush
    producer = JobProducer.for_lane(conn, qs, Lane(args.lane))
    try:
        return _send(args, producer, jobs, qs)
    except EnqueueError as exc:
        first = next(iter(exc.failures.values()))
        if authorization_code(first) is not None:
            raise denied(first, conn, producer.topic, "WRITE") from exc
        raise


def _send(args: argparse.Namespace, producer: JobProducer, jobs: list[EvaluationJob], qs: QueueSettings) -> int:
    total = len(jobs)

    def progress(sent: int) -> None:
        print(f"\r  sent {sent}/{total}", end="", file=sys.stderr, flush=True)

    deliveries = producer.enqueue_batch(jobs, on_progress=progress if total >= 1000 else None)
    if total >= 1000:
        print(file=sys.stderr)
    invalid = []
    for i in range(args.invalid):
        label, value = INVALID_SAMPLES[i % len(INVALID_SAMPLES)]
        invalid.append(RawRecord(key=f"invalid-{label}-{i}".encode(), value=value, label=f"invalid-{label}-{i}"))
    if invalid:
        deliveries += producer.send_raw(invalid)
    counts = deliveries_by_partition(deliveries)
    print(render(["partition", "records"], sorted(counts.items())))
    print(f"enqueued {len(deliveries)} record(s) to {producer.topic}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    qs = settings(args)
    updates = {}
    if args.handler:
        updates["handler"] = args.handler
    if args.handler_options:
        updates["handler_options"] = json.loads(args.handler_options)
    if args.max_in_flight:
        updates["max_in_flight"] = args.max_in_flight
    if updates:
        qs = qs.model_copy(update={"worker": qs.worker.model_copy(update=updates)})
    slot = Slot.parse(args.partitions)
    handler = load_handler(qs.worker.handler, qs.worker.handler_options)
    stop = threading.Event()

    def request_stop(signum: int) -> None:
        logging.getLogger("cv_queue.worker").info("signal %s: stopping after in-flight jobs", signum)
        stop.set()

    call_on_stop_signals(request_stop)  # SIGINT, SIGTERM and SIGHUP, whatever the process inherited
    worker = PartitionWorker(connection(args), qs, slot, handler=handler)
    try:
        metrics = start_cli_metrics(args.metrics_port, args, qs)
    except OSError as exc:
        print(f"error: cannot serve metrics on {qs.metrics.host}:{args.metrics_port}: {exc}", file=sys.stderr)
        return 2
    try:
        stats = worker.run(stop)
    finally:
        if metrics is not None:
            metrics.close()
    print(stats.summary(), file=sys.stderr)
    if stats.stop_reason == "fenced":
        print(f"worker for slot {slot.name} was fenced by a newer worker for the same slot; exiting",
              file=sys.stderr)
        return 3
    if stats.stop_reason == "fatal":
        print(f"worker for slot {slot.name} stopped on a fatal producer error (see above); restart it",
              file=sys.stderr)
        return 4
    if stats.stop_reason in (FailureKind.DENIED, FailureKind.TOPIC_STATE):  # errors that a restart does not cure
        print(f"error: worker for slot {slot.name}: {stats.stop_error}", file=sys.stderr)
        return FailureKind(stats.stop_reason).exit_code
    if stats.stop_reason == "handlers_exhausted":
        print(f"worker for slot {slot.name}: too many handlers stuck in timed-out jobs (threads, or async jobs "
              "that ignored their cancellation); completed work was committed, restart the worker to free them",
              file=sys.stderr)
        return 5
    return 0


def start_cli_metrics(port: int | None, args: argparse.Namespace, qs: QueueSettings) -> MetricsServer | None:
    """The /metrics endpoint of a command given --metrics-port (with the DLQ depth gauges), or None."""
    if port is None:
        return None
    return start_metrics_server(port, qs.metrics.host, connection(args), qs)


def cmd_status(args: argparse.Namespace) -> int:
    qs = settings(args)
    names = qs.topic_names
    admin = admin_client(connection(args))
    for topic in names.consumed:
        rows = [[x.partition, x.end_offset, "-" if x.committed is None else x.committed, x.lag]
                for x in group_lag(admin, qs.group_id, topic)]
        print(section(f"{topic} (group {qs.group_id})", render(["partition", "end", "committed", "lag"], rows)))
    dlq = group_lag(admin, qs.replay_group_id, names.dlq)
    # Categories by the recorded DLQ layout: these settings' could name another category for a partition.
    layout = recorded_dlq_layout(connection(args), admin, qs)
    if not layout.same_as(DlqLayout.of(qs)):
        print(f"warning: these settings give {DlqLayout.of(qs).describe()}, but the recorded DLQ layout is "
              f"{layout.describe()} (used below); workers and replays with these settings are refused")
    rows = [[x.partition, layout.label(x.partition), x.end_offset, "-" if x.committed is None else x.committed,
             x.lag] for x in dlq]
    print(section(f"{names.dlq} (replay group {qs.replay_group_id})",
                  render(["partition", "category", "end", "replayed up to", "depth"], rows)))
    for topic in (names.results, names.parked):
        ends = end_offsets(admin, topic, list(range(partition_count(admin, topic))))
        print(f"{topic}: {sum(ends.values())} record offset(s) across {len(ends)} partition(s)")
    print(f"DLQ depth: {sum(x.lag for x in dlq)}")
    print("(lag and depth are offset differences; transactional writes add one commit-marker offset per "
          "transaction and partition, so they are upper bounds on record counts)")
    return 0
