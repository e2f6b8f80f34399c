"""`cv-queue fleet relayout|layout|alive`: the recorded worker layout, and changing it safely."""

import argparse
import sys
from datetime import UTC, datetime

from cv_queue.cli.context import connection, settings
from cv_queue.kafka.client.clients import admin_client
from cv_queue.kafka.fleet.layout import ensure_layout_topic, read_layout
from cv_queue.kafka.fleet.presence import live_workers
from cv_queue.kafka.fleet.relayout import RelayoutRefusedError, relayout

REFUSED_EXIT = 1  # the re-layout was refused and nothing changed (2 stays "error")


def add_parser(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="the worker fleet's layout: show it, change it")
    fsub = fleet.add_subparsers(dest="fleet_cmd", required=True)
    grow = fsub.add_parser("relayout", help="grow the partitions and change the slots, once every worker stopped")
    grow.add_argument("--partitions", type=int, required=True, help="partitions of the main and retry topics")
    grow.add_argument("--per-worker", type=int, default=None,
                      help="partitions per worker slot (default: the recorded layout's)")
    grow.add_argument("--wait-s", type=float, default=15.0,
                      help="how long to wait for live workers to stop before refusing (a killed worker counts as "
                           "alive for up to 10 s)")
    grow.set_defaults(func=cmd_relayout)
    show = fsub.add_parser("layout", help="the recorded layout and the workers alive")
    show.set_defaults(func=cmd_layout)


def _progress(message: str) -> None:
    print(f"{datetime.now(UTC).strftime('%H:%M:%S')} {message}", flush=True)


def cmd_relayout(args: argparse.Namespace) -> int:
    conn = connection(args)
    try:
        relayout(conn, admin_client(conn), settings(args), args.partitions, args.per_worker, args.wait_s, _progress)
    except RelayoutRefusedError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return REFUSED_EXIT
    return 0


def cmd_layout(args: argparse.Namespace) -> int:
    conn = connection(args)
    admin = admin_client(conn)
    qs = settings(args)
    ensure_layout_topic(admin, qs)
    recorded = read_layout(conn, qs)
    if recorded is None:
        print("no layout recorded yet: the first worker to start records its settings' layout")
    else:
        print(f"recorded layout: {recorded.layout.describe()} (generation {recorded.generation}, "
              f"{recorded.at.isoformat()})\nworkers of this layout run with: {recorded.layout.env()}")
    alive = live_workers(admin, qs)
    print(f"workers alive: {len(alive)}")
    for worker in alive:
        print(f"  {worker.describe()}")
    return 0
