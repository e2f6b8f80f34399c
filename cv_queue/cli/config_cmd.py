"""`cv-queue config`: every setting with its default and environment variable, as markdown tables.

It prints defaults, never the environment's values, and a secret field (a SecretStr: passwords, API keys, webhook
URLs) shows only whether it has a default, so the output can be pasted anywhere. The rows are grouped by settings
section, one heading per settings model (the Kafka connection, the queue's own fields, then each nested model such as
`worker`, `retry`, `llm` and `llm.budget`).

`cv-queue config --write docs/09-configuration.md` (alias `--readme FILE`) rewrites the reference between the
config-reference markers of that page, and creates the page when it does not exist.
"""

import argparse
import inspect
import json
import re
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from cv_queue.settings import KafkaConnection, QueueSettings

DEFAULT_PAGE = Path("docs/09-configuration.md")


def add_parser(sub: argparse._SubParsersAction) -> None:
    cfg = sub.add_parser("config", help="print the configuration reference (markdown)")
    cfg.add_argument("--write", "--readme", dest="write", type=Path, default=None, metavar="FILE",
                     help="rewrite the reference between the config-reference markers of FILE instead (the "
                          f"documentation's page is {DEFAULT_PAGE}); a FILE that does not exist is created")
    cfg.set_defaults(func=cmd_config)


def is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation)


# Words of a settings section's field name that are written otherwise in a heading.
_WORDS = {"llm": "LLM", "k8s": "Kubernetes", "dlq": "DLQ"}


@dataclass
class Section:
    """The settings of one model: a heading (its level: 2 for a root model, one more per nesting), the model's
    docstring, the environment prefix and its rows."""

    title: str
    level: int
    prefix: str
    doc: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        """The heading's anchor, as GitHub makes it: lower case, punctuation dropped, spaces to hyphens."""
        return re.sub(r"[^\w\- ]", "", self.title.lower()).replace(" ", "-")


def _doc(model: type[BaseModel]) -> str:
    """The model's own docstring (not an inherited one), its first paragraph on one line."""
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _title(parent: str | None, name: str) -> str:
    words = " ".join(_WORDS.get(word, word) for word in name.split("_"))
    title = f"{parent} {words}" if parent else words
    return title[0].upper() + title[1:]


def _shown_default(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if is_secret(field):
        return "null" if default is None else "(secret)"
    return json.dumps(default, default=str) if not isinstance(default, str) else (default or "''")


def _collect(model: type[BaseModel], prefix: str, delimiter: str, title: str, nested_parent: str | None,
             out: list[Section], level: int = 2) -> None:
    """Append the section of `model` and, after it, those of its nested models (in field order)."""
    section = Section(title, level, prefix, _doc(model))
    out.append(section)
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested and not issubclass(annotation, BaseSettings):
            _collect(annotation, f"{prefix}{name.upper()}{delimiter}", delimiter, _title(nested_parent, name),
                     _title(nested_parent, name), out, level + 1)
            continue
        section.rows.append((f"{prefix}{name.upper()}", _shown_default(info), info.description or ""))


def sections() -> list[Section]:
    """Every settings section with rows, in the order the models declare them."""
    out: list[Section] = []
    _collect(KafkaConnection, "KAFKA_", "_", "Kafka connection", None, out)
    _collect(QueueSettings, "CVQ_", "__", "Queue", None, out)
    return [section for section in out if section.rows]


def _fill(text: str) -> str:
    """`text` wrapped to the docs' 118 columns, never inside a code span."""
    text = re.sub(r"`[^`]+`", lambda m: m.group(0).replace(" ", "\0"), text)
    return textwrap.fill(text, 118, break_long_words=False, break_on_hyphens=False).replace("\0", " ")


def reference() -> str:
    """The configuration reference: a list of the sections, then a heading and a table per section."""
    parts = [_fill("Sections: " + " · ".join(f"[{s.title}](#{s.anchor})" for s in sections()) + ".")]
    for section in sections():
        intro = f"{section.doc} " if section.doc else ""
        parts += [f"{'#' * section.level} {section.title}", _fill(f"{intro}Environment variables `{section.prefix}*`.")]
        lines = ["| environment variable | default | meaning |", "|---|---|---|"]
        lines += [f"| `{env}` | `{default}` | {doc} |" for env, default, doc in section.rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


START, END = "<!-- config-reference:start", "<!-- config-reference:end -->"


def write_reference(path: Path) -> None:
    """Rewrite the reference between the markers of `path`, keeping the text around them (a page without markers is
    an error); a page that does not exist is created with the reference alone."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Configuration reference\n\n{START} (regenerate with `cv-queue config --write {path}`) -->\n"
                        f"{reference()}\n{END}\n")
        return
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no config-reference markers")
    head, rest = text.split(START, 1)
    marker_line, _ = rest.split("\n", 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}{marker_line}\n{reference()}\n{END}{tail}")


def cmd_config(args: argparse.Namespace) -> int:
    if args.write is None:
        print(reference())
        return 0
    write_reference(args.write)
    return 0
