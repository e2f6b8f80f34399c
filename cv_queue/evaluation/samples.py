"""Sample evaluation jobs for the demo, the CLI and the benchmarks."""

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from cv_queue.evaluation.scorer import SKILL_VOCABULARY, SOFT_SKILLS
from cv_queue.messages import EvaluationJob

_RUBRIC = {"technical_skills": 0.4, "experience": 0.25, "achievements": 0.2, "culture_fit": 0.15}
_SKILLS = sorted(SKILL_VOCABULARY)
_SOFT = sorted(SOFT_SKILLS)


def sample_job(rng: random.Random, index: int, labels: dict[str, str] | None = None,
               prefix: str = "job") -> EvaluationJob:
    wanted = rng.sample(_SKILLS, 6)
    has = rng.sample(wanted, rng.randint(2, 6)) + rng.sample(_SKILLS, 3)
    years = rng.randint(1, 12)
    cv = (
        f"Backend engineer with {years} years of experience. Skills: {', '.join(has)}. "
        f"Reduced p99 latency by {rng.randint(10, 60)}% and cut infrastructure cost {rng.randint(2, 5)}x. "
        f"Known for {', '.join(rng.sample(_SOFT, 2))}."
    )
    brief = f"Build a job queue with retries and a dead letter queue using {', '.join(rng.sample(_SKILLS, 4))}."
    uid = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    return EvaluationJob(
        job_id=f"{prefix}-{index:06d}-{uid}",
        cv_id=f"cv-{uid}",
        project_id=f"project-{uid}",
        cv_text=cv,
        project_text=f"I built it with {', '.join(rng.sample(has, min(3, len(has))))} and wrote tests.",
        job_description=f"We need {rng.randint(2, 6)}+ years with {', '.join(wanted)}.",
        study_case_brief=brief,
        scoring_rubric=dict(_RUBRIC),
        request_id=f"req-{uid}",
        created_at=datetime.now(UTC),
        labels=labels or {},
    )


def sample_jobs(count: int, seed: int = 0, prefix: str = "job",
                labels_for: dict[int, dict[str, str]] | None = None) -> Iterator[EvaluationJob]:
    """`count` varied, valid jobs; `labels_for` adds labels (e.g. simulate directives) to chosen indexes."""
    rng = random.Random(seed)
    for i in range(count):
        yield sample_job(rng, i, (labels_for or {}).get(i), prefix=prefix)
