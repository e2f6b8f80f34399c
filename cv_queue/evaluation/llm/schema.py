"""The JSON schema of an answer, adapted to the job's rubric, and how each structured-output mode asks for it.

The schema is written for OpenAI's strict mode (every property required, no additional properties, numbers
bounded), which vLLM, Ollama and LiteLLM accept as well. `criteria` names exactly the rubric's criteria, so a
server that enforces the schema cannot leave one out.
"""

from collections.abc import Sequence
from typing import Any, Literal

OutputMode = Literal["json_schema", "json_object", "none"]

#: The order `auto` tries the modes in: the strongest guarantee first.
FALLBACK_ORDER: tuple[OutputMode, ...] = ("json_schema", "json_object", "none")

SCHEMA_NAME = "cv_evaluation"


def _score(low: float, high: float, description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high, "description": description}


def _text(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def answer_schema(criteria: Sequence[str]) -> dict[str, Any]:
    """The answer's JSON schema. Feedback comes before each score: models generate in property order, and a score
    written after its justification is better grounded than one written before it."""
    properties: dict[str, Any] = {
        "criteria": {
            "type": "object",
            "description": "One score per rubric criterion, from 0.0 (no evidence) to 1.0 (fully meets the bar).",
            "properties": {name: _score(0.0, 1.0, f"Score for {name}.") for name in criteria},
            "required": list(criteria),
            "additionalProperties": False,
        },
        "cv_feedback": _text("Strengths and gaps of the CV against the job description, with evidence."),
        "cv_match_rate": _score(0.0, 1.0, "Weighted average of the criteria scores, using the rubric's weights."),
        "project_feedback": _text("How well the project report answers the case-study brief, with evidence."),
        "project_score": _score(0.0, 10.0, "Quality of the project report against the brief."),
        "overall_summary": _text("Two or three sentences with a hiring recommendation."),
    }
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def response_format(mode: OutputMode, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` request parameter for `mode` (None: ask in the prompt only)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def next_mode(mode: OutputMode) -> OutputMode | None:
    """The weaker mode to try when a server refuses `mode`; None after the weakest."""
    index = FALLBACK_ORDER.index(mode)
    return FALLBACK_ORDER[index + 1] if index + 1 < len(FALLBACK_ORDER) else None
