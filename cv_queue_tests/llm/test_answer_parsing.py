"""From model text to scores: tolerant about the wrapping, strict about the content."""

import json

import pytest

from cv_queue.evaluation.llm.parsing import AnswerError, extract_json_object, parse_answer

CRITERIA = ["technical_skills", "experience"]


def answer(**changes: object) -> dict[str, object]:
    value: dict[str, object] = {
        "criteria": {"technical_skills": 0.8, "experience": 0.5},
        "cv_feedback": "Strong Python; no Kafka {yet}.",
        "cv_match_rate": 0.68,
        "project_feedback": "Covers retries.",
        "project_score": 7.5,
        "overall_summary": "Hire.",
    }
    value.update(changes)
    return value


def test_bare_json() -> None:
    assert extract_json_object(json.dumps(answer())) == answer()


def test_code_fence_and_prose_around_it() -> None:
    text = f"Here is my evaluation:\n```json\n{json.dumps(answer(), indent=2)}\n```\nAnything else?"
    assert extract_json_object(text) == answer()


def test_braces_inside_strings_do_not_end_the_object() -> None:
    tricky = answer(cv_feedback='Uses "{" and "}" and \\" quotes }}}')
    assert extract_json_object("Result: " + json.dumps(tricky) + " {not json}") == tricky


def test_the_first_complete_object_that_parses_wins() -> None:
    text = "Scores {like this} follow: " + json.dumps(answer()) + " and " + json.dumps({"second": 1})
    assert extract_json_object(text) == answer()


@pytest.mark.parametrize("text", ["", "no json here", '{"cv_match_rate": 0.8, "criteria": {', "[1, 2, 3]"])
def test_no_complete_object(text: str) -> None:
    with pytest.raises(AnswerError, match="no complete JSON object"):
        extract_json_object(text)


def test_valid_answer() -> None:
    scores = parse_answer(json.dumps(answer()), CRITERIA)
    assert scores.cv_match_rate == 0.68
    assert scores.criteria == {"technical_skills": 0.8, "experience": 0.5}


@pytest.mark.parametrize(
    ("changes", "quoted"),
    [
        ({"cv_match_rate": 1.7}, "cv_match_rate"),
        ({"project_score": 14}, "project_score"),
        ({"project_score": -1}, "project_score"),
        ({"verdict": "hire"}, "verdict"),
        ({"overall_summary": None}, "overall_summary"),
    ],
)
def test_out_of_range_or_wrong_fields_are_named(changes: dict[str, object], quoted: str) -> None:
    with pytest.raises(AnswerError, match=quoted):
        parse_answer(json.dumps(answer(**changes)), CRITERIA)


def test_missing_field_is_named() -> None:
    incomplete = answer()
    del incomplete["project_feedback"]
    with pytest.raises(AnswerError, match="project_feedback"):
        parse_answer(json.dumps(incomplete), CRITERIA)


@pytest.mark.parametrize(
    ("criteria", "quoted"),
    [
        ({"technical_skills": 0.8}, r"missing \['experience'\]"),
        ({"technical_skills": 0.8, "experience": 0.5, "charisma": 1.0}, r"not in the rubric \['charisma'\]"),
        ({"technical_skills": 1.2, "experience": 0.5}, r"criteria.technical_skills: 1.2 is outside \[0, 1\]"),
    ],
)
def test_criteria_must_match_the_rubric(criteria: dict[str, float], quoted: str) -> None:
    with pytest.raises(AnswerError, match=quoted):
        parse_answer(json.dumps(answer(criteria=criteria)), CRITERIA)
