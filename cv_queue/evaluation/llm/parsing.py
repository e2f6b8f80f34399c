"""From the model's text to validated scores: tolerant JSON extraction, then strict validation.

Servers without structured output wrap JSON in prose or code fences; the first balanced JSON object in the text is
the answer. Validation is strict: EvaluationScores' ranges, plus the rubric's criteria, each in [0, 1], none
missing and none invented. Every failure is an AnswerError whose message can be quoted back to the model.
"""

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from cv_queue.messages import EvaluationScores

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*$", re.MULTILINE)
_MAX_ERRORS_QUOTED = 6


class AnswerError(ValueError):
    """The answer is not usable; the message says why, in words the model can act on."""


def _balanced_object_end(text: str, start: int) -> int | None:
    """Index just past the object opening at text[start] ('{'), or None if it never closes. Braces inside JSON
    strings do not count."""
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def extract_json_object(text: str) -> dict[str, Any]:
    """The first balanced `{...}` in `text` that parses as a JSON object, code fences ignored."""
    unfenced = _FENCE.sub("", text)
    start = unfenced.find("{")
    while start != -1:
        end = _balanced_object_end(unfenced, start)
        if end is not None:
            try:
                value = json.loads(unfenced[start:end])
            except json.JSONDecodeError:
                pass
            else:
                if isinstance(value, dict):
                    return value
        start = unfenced.find("{", start + 1)
    raise AnswerError("the answer contains no complete JSON object")


def _pydantic_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:_MAX_ERRORS_QUOTED]:
        where = ".".join(str(part) for part in error["loc"]) or "<root>"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - _MAX_ERRORS_QUOTED
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _criteria_errors(criteria: dict[str, float], expected: Sequence[str]) -> list[str]:
    problems = []
    missing = [name for name in expected if name not in criteria]
    extra = sorted(set(criteria) - set(expected))
    if missing:
        problems.append(f"criteria: missing {missing}")
    if extra:
        problems.append(f"criteria: not in the rubric {extra}")
    problems.extend(
        f"criteria.{name}: {value} is outside [0, 1]" for name, value in criteria.items() if not 0.0 <= value <= 1.0
    )
    return problems


def parse_answer(text: str, criteria: Sequence[str]) -> EvaluationScores:
    """Validated scores from the model's answer, or AnswerError."""
    data = extract_json_object(text)
    try:
        scores = EvaluationScores.model_validate(data)
    except ValidationError as exc:
        raise AnswerError(_pydantic_errors(exc)) from exc
    problems = _criteria_errors(scores.criteria, criteria)
    if problems:
        raise AnswerError("; ".join(problems))
    return scores
