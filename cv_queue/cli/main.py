"""Entry point of the `cv-queue` command."""

import argparse
import signal
import sys

from confluent_kafka import KafkaException
from pydantic import ValidationError

from cv_queue import __version__
from cv_queue.broker.errors import BrokerError
from cv_queue.cli import (
    acls_cmd,
    bench_cmd,
    broker_cmd,
    config_cmd,
    dev_cmd,
    dlq_cmd,
    fleet_cmd,
    llm_server_cmd,
    queue_cmd,
    topics_cmd,
)
from cv_queue.cli.context import add_global_flags
from cv_queue.cli.signals import StopRequested, raise_on_stop_signals
from cv_queue.evaluation.handler import HandlerLoadError
from cv_queue.kafka.admin.topics import ProvisioningError
from cv_queue.kafka.client.auth import (
    EXIT_AUTH,
    EXIT_DENIED,
    KafkaAuthError,
    KafkaAuthorizationError,
    authorization_code,
)
from cv_queue.kafka.client.failures import TopicStateError
from cv_queue.kafka.client.transaction import TransactionFatalError
from cv_queue.kafka.fleet.join import LayoutMismatchError, WorkerStartError
from cv_queue.kafka.fleet.layout import LayoutError
from cv_queue.kafka.fleet.relayout import RelayoutRefusedError

# Errors with a message meant for the user: printed without a traceback.
_USER_ERRORS = (BrokerError, WorkerStartError, ProvisioningError, HandlerLoadError, ValidationError, KafkaException,
                ValueError, LayoutError, RelayoutRefusedError, TopicStateError, TransactionFatalError)
LAYOUT_MISMATCH_EXIT = 9  # `cv-queue worker` with settings of another layout than the recorded one (README)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cv-queue", description="A transactional job queue for AI CV evaluation.")
    parser.add_argument("--version", action="version", version=f"cv-queue {__version__}")
    add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (broker_cmd, topics_cmd, acls_cmd, queue_cmd, dlq_cmd, config_cmd, dev_cmd, bench_cmd, fleet_cmd,
                   llm_server_cmd):
        module.add_parser(sub)
    return parser


def _report(exc: BaseException, command: str) -> int:
    """Print a user error without a traceback; its exit code (6 authentication/TLS, 7 authorization, 10 a missing or
    recreated topic, 4 another error that ended a transaction for good, else 2)."""
    if isinstance(exc, KafkaAuthError):
        print(f"error: authentication/TLS: {exc}", file=sys.stderr)
        return EXIT_AUTH
    if isinstance(exc, KafkaAuthorizationError):
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DENIED
    if isinstance(exc, KafkaException) and authorization_code(exc) is not None:
        print(f"error: authorization denied: {exc.args[0].str()} (command `{command}`; grant the ACL with "
              "`cv-queue acls apply` as an admin, or log in as a principal that holds it: KAFKA_SASL_USERNAME)",
              file=sys.stderr)
        return EXIT_DENIED
    print(f"error: {exc}", file=sys.stderr)
    if isinstance(exc, TopicStateError):
        return exc.exit_code
    if isinstance(exc, TransactionFatalError):  # a denial, a missing topic or another fatal error, by its Kafka errors
        return exc.exit_code
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own handlers, whatever the process inherited (cli/signals.py); commands that stop gracefully
    # (`worker`, `dev`) replace them with theirs.
    raise_on_stop_signals()
    try:
        return int(args.func(args))
    except LayoutMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return LAYOUT_MISMATCH_EXIT
    except (KafkaAuthError, KafkaAuthorizationError, *_USER_ERRORS) as exc:
        return _report(exc, args.command)
    except StopRequested as stop:
        print(f"stopped by {signal.Signals(stop.signum).name}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
