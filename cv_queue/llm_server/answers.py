"""What the local server answers: directives read from the prompt, and deterministic answers built from a schema.

A directive is a marker anywhere in a message, `[[llm:NAME(:OPTION)*]]`, e.g. `[[llm:429:retry-after=2]]`. A test
job carries it in its CV text, which the evaluator's prompt quotes.
"""

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

_DIRECTIVE = re.compile(r"\[\[llm:([^\[\]]+)\]\]")
_FENCED_JSON = re.compile(r"```json\s*\n(.*?)\n\s*```", re.DOTALL)


@dataclass(frozen=True)
class Directive:
    name: str  # "429", "500", "hang", "malformed", "malformed-once", "out-of-range", "fenced", "sleep", ...
    options: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int | None:
        return int(self.name) if self.name.isdigit() else None


def message_texts(messages: list[dict[str, Any]]) -> list[str]:
    """The text of each message (string content, or the text parts of a list content)."""
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part.get("text", "") for part in content if isinstance(part, dict))
    return texts


def find_directives(messages: list[dict[str, Any]]) -> list[Directive]:
    found = []
    for text in message_texts(messages):
        for match in _DIRECTIVE.finditer(text):
            name, *rest = match.group(1).split(":")
            options = dict(item.split("=", 1) if "=" in item else (item, "") for item in rest)
            found.append(Directive(name.strip(), options))
    return found


def schema_in_prompt(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The JSON schema quoted in a ```json block of the prompt: what a model follows without response_format."""
    for text in message_texts(messages):
        for block in _FENCED_JSON.findall(text):
            try:
                value = json.loads(block)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and "properties" in value:
                return value
    return None


def _fraction(seed: str, path: str) -> float:
    digest = hashlib.sha256(f"{seed}|{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def answer_for_schema(schema: dict[str, Any], seed: str, out_of_range: bool = False, path: str = "$") -> Any:
    """A value that satisfies `schema`, the same for the same seed. With `out_of_range`, every bounded number
    overshoots its maximum instead (a model ignoring the ranges)."""
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            name: answer_for_schema(sub, seed, out_of_range, f"{path}.{name}")
            for name, sub in schema.get("properties", {}).items()
        }
    if kind in ("number", "integer"):
        low = float(schema.get("minimum", 0.0))
        high = float(schema.get("maximum", low + 10.0))
        if out_of_range and "maximum" in schema:
            return high + 0.5 + high
        value = low + (high - low) * _fraction(seed, path)
        return int(value) if kind == "integer" else round(min(value, high), 3)
    if kind == "boolean":
        return _fraction(seed, path) < 0.5
    if kind == "array":
        return []
    return f"Deterministic note for {path.removeprefix('$.')} ({hashlib.sha256(seed.encode()).hexdigest()[:8]})."


def malformed_answer(seed: str) -> str:
    """Prose around a JSON object that never closes: more than 2,000 characters of it, so truncation shows."""
    opening = '{"cv_match_rate": 0.8, "project_score": 7.5, "criteria": {"technical_skills": 0.9,\n'
    filler = "".join(f"  The candidate's line {n} shows evidence I keep describing ({seed[:8]}).\n" for n in range(40))
    return "Sure! Here is my evaluation of the candidate.\n\n" + opening + filler
