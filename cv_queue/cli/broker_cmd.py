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
from cv_queue.broker.errors import BrokerError
from cv_queue.broker.fetch import KAFKA_VERSION, cached_libs, fetch_kafka, kafka_home
from cv_queue.broker.scram import ADMIN, PRINCIPALS
from cv_queue.broker.security import OwnTls, SecurityMode, security_of
from cv_queue.broker.state import BrokerState
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
    start.add_argument("--security", choices=[m.value for m in SecurityMode], default=None,
                       help="sasl_ssl: a SASL_SSL listener (SCRAM-SHA-512 users cvq-admin, cvq-worker, cvq-replayer, "
                       "cvq-producer), TLS and the StandardAuthorizer; default plaintext")
    start.add_argument("--tls-dir", type=Path, default=None,
                       help="your own TLS files for sasl_ssl: ca.pem, server.pem and server-key.pem in this folder "
                       "(default: a CA and certificate generated into the data dir)")
    start.add_argument("--ca", type=Path, default=None, help="your own CA certificate (PEM), with --cert and --key")
    start.add_argument("--cert", type=Path, default=None,
                       help="your own server certificate chain (PEM; SANs 127.0.0.1 and localhost)")
    start.add_argument("--key", type=Path, default=None, help="the server certificate's private key (PEM, unencrypted)")
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


def _own_tls(args: argparse.Namespace) -> OwnTls | None:
    files = (args.ca, args.cert, args.key)
    if args.tls_dir is not None:
        if any(files):
            raise BrokerError("--tls-dir and --ca/--cert/--key were both given.", "use one or the other.")
        return OwnTls.from_dir(args.tls_dir)
    if not any(files):
        return None
    if not all(files):
        raise BrokerError("--ca, --cert and --key go together.", "pass all three (or --tls-dir).")
    return OwnTls(args.ca, args.cert, args.key)


def print_client_settings(state: BrokerState) -> None:
    """How a client reaches a secured broker: every setting but the password, and where the passwords are."""
    security = security_of(state)
    print(f"security: SASL_SSL with SCRAM-SHA-512, StandardAuthorizer (super user {ADMIN})", file=sys.stderr)
    print(f"CA certificate: {security.tls.ca}", file=sys.stderr)
    print(f"passwords of {', '.join(PRINCIPALS)}: {security.credentials_file} (user=password, mode 0600)",
          file=sys.stderr)
    print("client settings (choose the principal; the password is the one in the file above):", file=sys.stderr)
    print(f"  export KAFKA_BOOTSTRAP_SERVERS={state.bootstrap}", file=sys.stderr)
    for key, value in security.client_env("cvq-worker").items():
        print(f"  export {key}={value}", file=sys.stderr)
    print(f"  export KAFKA_SASL_PASSWORD=\"$(sed -n 's/^cvq-worker=//p' {security.credentials_file})\"",
          file=sys.stderr)
    print(f"then, as {ADMIN}: `cv-queue topics provision` and `cv-queue acls apply`", file=sys.stderr)


def cmd_start(args: argparse.Namespace) -> int:
    started = time.monotonic()
    state = start_cluster(args.nodes, args.port, args.data_dir, args.state_file, args.timeout,
                          security=args.security, own_tls=_own_tls(args))
    print(f"Kafka {state.kafka_version} ready with {len(state.nodes)} node(s) in "
          f"{time.monotonic() - started:.1f}s; data in {state.data_root}"
          f"{' (ephemeral)' if state.ephemeral else ''}", file=sys.stderr)
    if state.security == SecurityMode.SASL_SSL:
        print_client_settings(state)
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
