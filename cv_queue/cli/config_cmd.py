"""`cv-queue config`: every setting with its default and environment variable, as a markdown table.

It prints defaults, never the environment's values, and a secret field (a SecretStr: passwords, API keys, webhook
URLs) shows only whether it has a default, so the output can be pasted anywhere.
"""

import argparse
import json
import typing
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from cv_queue.settings import KafkaConnection, QueueSettings


def add_parser(sub: argparse._SubParsersAction) -> None:
    cfg = sub.add_parser("config", help="print the configuration reference (markdown)")
    cfg.add_argument("--readme", type=Path, default=None,
                     help="rewrite the reference between the config-reference markers of this file instead")
    cfg.set_defaults(func=cmd_config)


def is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation)


def _rows(model: type[BaseModel], prefix: str, delimiter: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested and not issubclass(annotation, BaseSettings):
            rows += _rows(annotation, f"{prefix}{name.upper()}{delimiter}", delimiter)
            continue
        default = field.get_default(call_default_factory=True)
        if is_secret(field):
            shown = "null" if default is None else "(secret)"
        else:
            shown = json.dumps(default, default=str) if not isinstance(default, str) else (default or "''")
        rows.append((f"{prefix}{name.upper()}", shown, field.description or ""))
    return rows


def reference() -> str:
    lines = ["| environment variable | default | meaning |", "|---|---|---|"]
    for env, default, doc in _rows(KafkaConnection, "KAFKA_", "_") + _rows(QueueSettings, "CVQ_", "__"):
        lines.append(f"| `{env}` | `{default}` | {doc} |")
    return "\n".join(lines)


START, END = "<!-- config-reference:start", "<!-- config-reference:end -->"


def cmd_config(args: argparse.Namespace) -> int:
    if args.readme is None:
        print(reference())
        return 0
    text = args.readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{args.readme} has no config-reference markers")
    head, rest = text.split(START, 1)
    marker_line, _ = rest.split("\n", 1)
    _, tail = rest.split(END, 1)
    args.readme.write_text(f"{head}{START}{marker_line}\n{reference()}\n{END}{tail}")
    return 0
