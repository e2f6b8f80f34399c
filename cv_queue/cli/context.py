"""Connection and settings for a CLI invocation: environment first, then top-level flags.

Every command that talks to the broker gets its connection from `connection(args)`, which checks the login and TLS
first (`check_access`). librdkafka reports a refused login only through its error callback and retries for ever, so
a command that skipped the check would end on its own timeout with "Broker transport failure", which does not say
authentication. Checking here, once per process, means no command can forget it: a wrong password ends every one
within seconds with KafkaAuthError (exit 6, naming KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD). Commands that never
talk to a broker (`config`, `broker`, `acls describe --markdown`, `dev`, which starts its own) never call it.
"""

import argparse
import hashlib
import json

from cv_queue.kafka.client.auth import check_access
from cv_queue.settings import KafkaConnection, QueueSettings

# Digests of the connections this process has checked. A command may build its connection several times (a metrics
# endpoint, then the work itself), and each check costs a TLS handshake and a metadata round trip. Keyed by the
# whole client config, so a changed setting (bench points KAFKA_BOOTSTRAP_SERVERS at the broker it starts) is
# checked again; a digest, so the set holds no password.
_checked: set[str] = set()


def add_global_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", "-X", default=None,
                        help="override KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092)")
    parser.add_argument("--namespace", default=None, help="override CVQ_NAMESPACE (topic/group prefix)")


def connection(args: argparse.Namespace) -> KafkaConnection:
    """The broker connection of this invocation, once the broker accepted its login and TLS (KafkaAuthError, which
    the CLI ends with exit 6, otherwise). Only commands that talk to the broker may call it."""
    conn = KafkaConnection()
    if getattr(args, "bootstrap_servers", None):
        conn = conn.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    key = hashlib.sha256(json.dumps(conn.client_config(), sort_keys=True).encode()).hexdigest()
    if key not in _checked:
        check_access(conn)  # a PLAINTEXT connection returns at once: there is no login to check
        _checked.add(key)
    return conn


def settings(args: argparse.Namespace) -> QueueSettings:
    qs = QueueSettings()
    if getattr(args, "namespace", None) is not None:
        qs = qs.model_copy(update={"namespace": args.namespace})
    return qs
