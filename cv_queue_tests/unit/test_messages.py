"""Strict decoding of jobs: every malformed input raises one typed error with a precise reason."""

import json
from datetime import UTC, datetime

import pytest

from cv_queue.errors import InvalidPayloadError
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.messages import EvaluationJob, EvaluationResult, EvaluationScores, decode_job

JOB = next(sample_jobs(1, seed=3))


def _with(**changes) -> bytes:
    body = json.loads(JOB.to_bytes())
    body.update(changes)
    return json.dumps(body).encode()


def test_round_trip_is_exact():
    decoded = decode_job(JOB.to_bytes(), JOB.key)
    assert decoded == JOB
    assert decoded.to_bytes() == JOB.to_bytes()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null_value"),
        (b"\xff\xfe{}", "bad_utf8"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"job_id": "x"}', "missing_field"),
        (_with(cv_id=7), "schema_invalid"),
        (_with(schema_version=2), "unknown_schema_version"),
        (_with(surprise=True), "unknown_field"),
        (_with(created_at="2026-01-01T00:00:00"), "schema_invalid"),  # naive timestamps are refused
        (_with(cv_text=None), "schema_invalid"),  # neither cv_text nor cv_ref
        (_with(scoring_rubric={"technical_skills": 0}), "schema_invalid"),
    ],
)
def test_each_malformation_has_its_reason(value, reason):
    with pytest.raises(InvalidPayloadError) as info:
        decode_job(value, JOB.key)
    assert info.value.reason == reason


def test_oversize_is_rejected_before_parsing():
    with pytest.raises(InvalidPayloadError) as info:
        decode_job(JOB.to_bytes(), JOB.key, max_bytes=len(JOB.to_bytes()) - 1)
    assert info.value.reason == "oversize"
    assert decode_job(JOB.to_bytes(), JOB.key, max_bytes=len(JOB.to_bytes())) == JOB


def test_key_must_be_the_job_id():
    with pytest.raises(InvalidPayloadError) as info:
        decode_job(JOB.to_bytes(), b"someone-else")
    assert info.value.reason == "key_mismatch"


def test_result_serialises_and_validates():
    scores = EvaluationScores(cv_match_rate=0.5, project_score=7.0, cv_feedback="a", project_feedback="b",
                              overall_summary="c")
    now = datetime.now(UTC)
    result = EvaluationResult(job_id=JOB.job_id, request_id=JOB.request_id, scores=scores, evaluated_at=now,
                              job_created_at=JOB.created_at, attempts=2, handler_calls=4, worker="w")
    assert EvaluationResult.model_validate_json(result.to_bytes()) == result
    with pytest.raises(ValueError):
        EvaluationResult(job_id="j", request_id="r", scores=scores, evaluated_at=now, job_created_at=now,
                         attempts=0, handler_calls=1, worker="w")


def test_jobs_are_immutable():
    with pytest.raises(ValueError):
        JOB.job_id = "other"  # type: ignore[misc]
    assert isinstance(JOB, EvaluationJob)
