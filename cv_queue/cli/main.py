"""Entry point of the `cv-queue` command."""

import argparse
import sys

from confluent_kafka import KafkaException
from pydantic import ValidationError

from cv_queue import __version__
from cv_queue.broker.errors import BrokerError
from cv_queue.cli import bench_cmd, broker_cmd, config_cmd, dev_cmd, dlq_cmd, fleet_cmd, queue_cmd, topics_cmd
from cv_queue.cli.context import add_global_flags
from cv_queue.evaluation.handler import HandlerLoadError
from cv_queue.kafka.fleet_layout import LayoutError
from cv_queue.kafka.relayout import RelayoutRefusedError
from cv_queue.kafka.topics import ProvisioningError
from cv_queue.kafka.worker import LayoutMismatchError, WorkerStartError

# Errors with a message meant for the user: printed without a traceback.
_USER_ERRORS = (BrokerError, WorkerStartError, ProvisioningError, HandlerLoadError, ValidationError, KafkaException,
                ValueError, LayoutError, RelayoutRefusedError)
LAYOUT_MISMATCH_EXIT = 7  # `cv-queue worker` with settings of another layout than the recorded one (README)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cv-queue", description="A transactional job queue for AI CV evaluation.")
    parser.add_argument("--version", action="version", version=f"cv-queue {__version__}")
    add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (broker_cmd, topics_cmd, queue_cmd, dlq_cmd, config_cmd, dev_cmd, bench_cmd, fleet_cmd):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LayoutMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return LAYOUT_MISMATCH_EXIT
    except _USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
