"""`cv-queue dlq peek|replay`."""

import argparse
import contextlib
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from cv_queue.cli.context import connection, settings
from cv_queue.cli.queue_cmd import start_cli_metrics
from cv_queue.cli.signals import StopRequested
from cv_queue.cli.tables import render
from cv_queue.errors import CATEGORY_ORDER, DEFAULT_REPLAY_CATEGORIES, ErrorCategory, InvalidPayloadError
from cv_queue.kafka.admin.lag import committed_offsets, end_offsets
from cv_queue.kafka.client.clients import admin_client, assigned_consumer, message_headers, poll_batch
from cv_queue.kafka.metrics.depth import DepthPoller
from cv_queue.kafka.replay.replayer import replay_dead_letters
from cv_queue.kafka.replay.request import ReplayReport, ReplayRequest
from cv_queue.kafka.wire.envelope import read_dead_letter

_CATEGORIES = [c.value for c in CATEGORY_ORDER]


def add_parser(sub: argparse._SubParsersAction) -> None:
    dlq = sub.add_parser("dlq", help="inspect and replay dead letters")
    dsub = dlq.add_subparsers(dest="dlq_cmd", required=True)
    peek = dsub.add_parser("peek", help="show dead letters not yet replayed (reads without committing)")
    peek.add_argument("--limit", type=int, default=20)
    peek.add_argument("--category", action="append", choices=_CATEGORIES, help="repeatable (default: all)")
    peek.set_defaults(func=cmd_peek)

    rep = dsub.add_parser("replay", help="republish dead letters to the main topic, exactly once")
    rep.add_argument("--category", action="append", choices=_CATEGORIES,
                     help="repeatable (default: transient and rate_limited)")
    rep.add_argument("--error-class", action="append", default=[],
                     help="only letters of this error class, full dotted or bare name (repeatable). A partition's "
                          "replay stops at its first letter of another class: that letter and all after it stay "
                          "for a later replay (never skipped)")
    rep.add_argument("--min-age", type=float, default=0.0,
                     help="seconds since failure (default 0). A partition's replay stops at its first younger "
                          "letter: that letter and all after it stay for a later replay")
    rep.add_argument("--max-messages", type=int, default=10_000)
    rep.add_argument("--max-replays", type=int, default=None, help="park letters replayed this often")
    rep.add_argument("--target", default=None, help="topic to replay into (default: the main topic)")
    rep.add_argument("--dry-run", action="store_true", help="report only; produce and commit nothing")
    rep.add_argument("--metrics-port", type=int, default=None,
                     help="serve Prometheus metrics while the replay runs (0 = any free port; the URL is logged)")
    rep.add_argument("--metrics-linger", type=float, default=0.0,
                     help="with --metrics-port: keep serving this many seconds after the run, so that a scrape "
                          "sees the final counts (at least the scrape interval; Ctrl-C or SIGTERM ends it early)")
    rep.set_defaults(func=cmd_replay)


def cmd_peek(args: argparse.Namespace) -> int:
    qs = settings(args)
    conn = connection(args)
    topic = qs.topic_names.dlq
    categories = [ErrorCategory(c) for c in (args.category or _CATEGORIES)]
    partitions = qs.dlq_partitions(categories)
    admin = admin_client(conn)
    committed = committed_offsets(admin, qs.replay_group_id, topic, partitions)
    ends = end_offsets(admin, topic, partitions)
    # A group of its own, never committed: peeking must not move the replay group's offsets.
    consumer = assigned_consumer(conn, qs, f"{qs.replay_group_id}-peek", role="dlq-peek")
    consumer.assign([TopicPartition(topic, p, committed[p] if committed[p] is not None else OFFSET_BEGINNING)
                     for p in partitions])
    rows, remaining = [], {p for p in partitions if (committed[p] or 0) < ends[p]}
    try:
        while remaining and len(rows) < args.limit:
            batch = poll_batch(consumer, min(500, args.limit), 2.0)
            if not batch:
                break
            for msg in batch:
                if msg.error() is not None or len(rows) >= args.limit:
                    continue
                if msg.offset() + 1 >= ends[msg.partition()]:
                    remaining.discard(msg.partition())
                try:
                    dl = read_dead_letter(topic, msg.partition(), msg.offset(), msg.key(), msg.value(),
                                          message_headers(msg)[0])
                    rows.append([f"{dl.dlq_partition}/{dl.dlq_offset}", (dl.key or b"").decode(errors="replace")[:40],
                                 dl.category, dl.error_class.rsplit(".", 1)[-1], dl.error_message[:60], dl.attempts,
                                 dl.replays, f"{dl.original_topic}[{dl.original_partition}]@{dl.original_offset}",
                                 f"{dl.failed_at:%H:%M:%S}"])
                except InvalidPayloadError as exc:
                    rows.append([f"{msg.partition()}/{msg.offset()}", "", "?", "", f"undecodable: {exc}"[:60],
                                 "", "", "", ""])
    finally:
        consumer.close()
    print(render(["dlq", "key", "category", "error", "message", "attempts", "replays", "origin", "failed"], rows))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    qs = settings(args)
    request = ReplayRequest(
        categories=[ErrorCategory(c) for c in args.category] if args.category else list(DEFAULT_REPLAY_CATEGORIES),
        error_classes=args.error_class,
        min_age_s=args.min_age,
        max_messages=args.max_messages,
        dry_run=args.dry_run,
        target_topic=args.target,
        max_replays=args.max_replays if args.max_replays is not None else qs.replay.max_replays,
    )

    def progress(report: object) -> None:
        print(f"\r  scanned {report.scanned}", end="", file=sys.stderr, flush=True)  # type: ignore[attr-defined]

    try:
        metrics = start_cli_metrics(args.metrics_port, args, qs)
    except OSError as exc:
        print(f"error: cannot serve metrics on {qs.metrics.host}:{args.metrics_port}: {exc}", file=sys.stderr)
        return 2
    if metrics is not None:
        print(f"serving metrics on {metrics.url}", file=sys.stderr, flush=True)
    try:
        conn = connection(args)
        report = replay_dead_letters(conn, qs, request, on_progress=progress)
        print(file=sys.stderr)
        _print_report(report)
        if metrics is not None:
            sys.stdout.flush()
            # The replay is done and reported: a stop while the final depth is read, or while lingering, ends the
            # command early and it still succeeds.
            with contextlib.suppress(StopRequested):
                if metrics.depth is not None:
                    _refresh_depth(metrics.depth)
                time.sleep(args.metrics_linger)
    finally:
        if metrics is not None:
            metrics.close()
    return 0


def _refresh_depth(depth: DepthPoller, deadline_s: float = 15.0) -> None:
    """The depth after this run, not as of the last interval. Right after the run's last commit the group's offsets
    can still be pending (the broker answers UNSTABLE_OFFSET_COMMIT until the transaction marker is written), so a
    failed read is tried again for a while instead of leaving the stale figure up."""
    give_up = time.monotonic() + deadline_s
    while not depth.refresh() and time.monotonic() < give_up:
        time.sleep(0.5)


def _print_report(report: ReplayReport) -> None:
    rows = [[cat, outcome, n] for cat, outcomes in report.by_category.items() for outcome, n in outcomes.items()]
    print(render(["category", "outcome", "letters"], rows))
    print(f"{'DRY RUN: ' if report.dry_run else ''}scanned {report.scanned}, replayed {report.replayed}, "
          f"parked {report.parked} in {report.seconds:.2f}s"
          + (f"; left young letters from offsets {report.left_too_young}" if report.left_too_young else "")
          + (f"; left letters of other error classes from offsets {report.left_unmatched}"
             if report.left_unmatched else "")
          + (f"; moved {report.refiled} letter(s) whose category header is not one asked for to that category's "
             "DLQ partitions" if report.refiled else ""))
