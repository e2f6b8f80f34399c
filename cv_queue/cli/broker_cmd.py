"""`cv-queue broker fetch|start|stop|status`: the local Kafka broker."""

import argparse
import sys
import time
from pathlib import Path

from cv_queue.broker.cluster import (
    DEFAULT_PORT,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    cluster_status,
    start_cluster,
    stop_cluster,
)
from cv_queue.broker.fetch import KAFKA_VERSION, cached_libs, fetch_kafka, kafka_home
from cv_queue.cli.tables import render


def add_parser(sub: argparse._SubParsersAction) -> None:
    broker = sub.add_parser("broker", help="run a local Apache Kafka broker (KRaft) from Maven jars")
    bsub = broker.add_subparsers(dest="broker_cmd", required=True)

    fetch = bsub.add_parser("fetch", help=f"resolve Kafka {KAFKA_VERSION} jars into the cache (once)")
    fetch.set_defaults(func=cmd_fetch)

    start = bsub.add_parser(
        "start", help="format storage, start the node(s), print the bootstrap string; after a crash, restart "
        "the recorded node(s) that died on their ports and data")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=None,
                       help="cluster size (default: the recorded cluster's, else 1)")
    start.add_argument("--port", type=int, default=None,
                       help=f"first client port; node i listens on port+i, its controller on port+100+i "
                       f"(default: the recorded cluster's, else {DEFAULT_PORT})")
    start.add_argument("--data-dir", type=Path, default=None,
                       help="keep data here across restarts (default: the recorded cluster's, else a temporary "
                       "dir removed on stop)")
    start.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for readiness")
    start.set_defaults(func=cmd_start)

    stop = bsub.add_parser("stop", help="SIGTERM the node(s), SIGKILL after --timeout, remove ephemeral data")
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S)
    stop.set_defaults(func=cmd_stop)

    status = bsub.add_parser("status", help="what is running")
    status.set_defaults(func=cmd_status)
    for p in (start, stop, status):
        p.add_argument("--state-file", type=Path, default=None,
                       help="where start records what it launched (default $CVQ_BROKER_STATE or the cache)")


def cmd_fetch(args: argparse.Namespace) -> int:
    was_cached = cached_libs() is not None
    started = time.monotonic()
    libs = fetch_kafka()
    jars = len(list(libs.glob("*.jar")))
    how = "already cached" if was_cached else f"fetched in {time.monotonic() - started:.1f}s"
    print(f"Kafka {KAFKA_VERSION}: {jars} jars in {libs} ({how})", file=sys.stderr)
    print(kafka_home())
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    started = time.monotonic()
    state = start_cluster(args.nodes, args.port, args.data_dir, args.state_file, args.timeout)
    print(f"Kafka {state.kafka_version} ready with {len(state.nodes)} node(s) in "
          f"{time.monotonic() - started:.1f}s; data in {state.data_root}"
          f"{' (ephemeral)' if state.ephemeral else ''}", file=sys.stderr)
    print(state.bootstrap)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    state = stop_cluster(args.state_file, args.timeout)
    if state is None:
        print("no local broker is recorded as running", file=sys.stderr)
        return 0
    print(f"stopped {len(state.nodes)} node(s) at {state.bootstrap}"
          f"{'; removed ' + state.data_root if state.ephemeral else ''}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state, alive = cluster_status(args.state_file)
    if state is None:
        print("no local broker is recorded as running")
        return 1
    rows = [[n.node_id, n.pid, "running" if alive[n.node_id] else "dead", f"127.0.0.1:{n.client_port}",
             f"127.0.0.1:{n.controller_port}", n.data_dir] for n in state.nodes]
    print(f"bootstrap: {state.bootstrap}  kafka: {state.kafka_version}  started: {state.started_at:%Y-%m-%d %H:%M:%S}Z")
    print(render(["node", "pid", "state", "listener", "controller", "data dir"], rows))
    return 0 if all(alive.values()) else 1
