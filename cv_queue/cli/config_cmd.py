"""`cv-queue config`: every setting with its default and environment variable, as a markdown table."""

import argparse
import json

from pydantic import BaseModel
from pydantic_settings import BaseSettings

from cv_queue.settings import KafkaConnection, QueueSettings


def add_parser(sub: argparse._SubParsersAction) -> None:
    cfg = sub.add_parser("config", help="print the configuration reference (markdown)")
    cfg.set_defaults(func=cmd_config)


def _rows(model: type[BaseModel], prefix: str, delimiter: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested and not issubclass(annotation, BaseSettings):
            rows += _rows(annotation, f"{prefix}{name.upper()}{delimiter}", delimiter)
            continue
        default = field.get_default(call_default_factory=True)
        shown = json.dumps(default, default=str) if not isinstance(default, str) else (default or "''")
        rows.append((f"{prefix}{name.upper()}", shown, field.description or ""))
    return rows


def reference() -> str:
    lines = ["| environment variable | default | meaning |", "|---|---|---|"]
    for env, default, doc in _rows(KafkaConnection, "KAFKA_", "_") + _rows(QueueSettings, "CVQ_", "__"):
        lines.append(f"| `{env}` | `{default}` | {doc} |")
    return "\n".join(lines)


def cmd_config(args: argparse.Namespace) -> int:
    print(reference())
    return 0
