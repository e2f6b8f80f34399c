"""Connection and settings for a CLI invocation: environment first, then top-level flags."""

import argparse

from cv_queue.settings import KafkaConnection, QueueSettings


def add_global_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", "-X", default=None,
                        help="override KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092)")
    parser.add_argument("--namespace", default=None, help="override CVQ_NAMESPACE (topic/group prefix)")


def connection(args: argparse.Namespace) -> KafkaConnection:
    conn = KafkaConnection()
    if getattr(args, "bootstrap_servers", None):
        conn = conn.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    return conn


def settings(args: argparse.Namespace) -> QueueSettings:
    qs = QueueSettings()
    if getattr(args, "namespace", None) is not None:
        qs = qs.model_copy(update={"namespace": args.namespace})
    return qs
