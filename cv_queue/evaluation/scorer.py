"""The default handler: a deterministic, explainable CV evaluation.

Scores the CV against the job description on the rubric's criteria, and the project report against the
study case brief. The same input always yields the same scores, which is what lets the queue's tests
compare results byte for byte across crashes and replays.
"""

import re
from pathlib import Path
from urllib.parse import urlparse

from cv_queue.errors import PermanentJobError
from cv_queue.evaluation.handler import JobContext
from cv_queue.messages import EvaluationJob, EvaluationScores

# Word lists read better as text; the split is done once at import.
SKILL_VOCABULARY = frozenset(
    """python go golang java kotlin rust typescript javascript react node sql postgres postgresql mysql redis
    kafka redpanda rabbitmq docker kubernetes terraform aws gcp azure linux grpc rest graphql fastapi django
    flask spark airflow dagster dbt pandas numpy pytorch tensorflow llm rag embeddings qdrant openai
    prometheus grafana opentelemetry ci cd git microservices testing tdd observability security""".split()  # noqa: SIM905
)
SOFT_SKILLS = frozenset(
    "communication collaboration ownership mentoring leadership teamwork stakeholder agile feedback".split()  # noqa: SIM905
)
_STOPWORDS = frozenset(
    """the and for with that this from have will your you our are was were been their they them into over
    such about more most must should would could able ability strong experience years year work working
    team role using used use good great plus required preferred including within across candidate""".split()  # noqa: SIM905
)
_TOKEN = re.compile(r"[a-z][a-z0-9+#]*")
_YEARS = re.compile(r"(\d{1,2})\s*\+?\s*(?:years|yrs)")
_ACHIEVEMENT = re.compile(r"\b\d+(?:\.\d+)?\s*(?:%|x\b|k\b|ms\b|percent)|\b(?:increased|reduced|cut|grew|saved)\b")

KNOWN_CRITERIA = ("technical_skills", "experience", "achievements", "culture_fit")


def _tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def _wanted_skills(job_description: str) -> set[str]:
    tokens = _tokens(job_description)
    skills = tokens & SKILL_VOCABULARY
    if skills:
        return skills
    # No known technology named: fall back to the description's distinctive words.
    return {t for t in tokens if len(t) >= 5 and t not in _STOPWORDS}


def _years(text: str) -> int:
    return max((int(m) for m in _YEARS.findall(text.lower())), default=0)


def read_cv(job: EvaluationJob) -> str:
    if job.cv_text is not None:
        return job.cv_text
    ref = urlparse(job.cv_ref or "")
    if ref.scheme != "file":
        raise PermanentJobError(f"cv_ref scheme {ref.scheme!r} is not supported (use file:///path)")
    return Path(ref.path).read_text(encoding="utf-8")  # a missing file is permanent (FileNotFoundError)


class KeywordScorer:
    """Skill and keyword coverage weighted by the rubric; no network, no randomness."""

    def __call__(self, job: EvaluationJob, ctx: JobContext) -> EvaluationScores:
        unknown = sorted(set(job.scoring_rubric) - set(KNOWN_CRITERIA))
        if unknown:
            raise PermanentJobError(f"unknown rubric criteria {unknown}; known: {list(KNOWN_CRITERIA)}")
        cv = read_cv(job)
        return score(job, cv)


def score(job: EvaluationJob, cv: str) -> EvaluationScores:
    cv_tokens = _tokens(cv)
    wanted = _wanted_skills(job.job_description)
    matched = sorted(wanted & cv_tokens)
    missing = sorted(wanted - cv_tokens)
    asked_years = _years(job.job_description) or 3
    cv_years = _years(cv)
    achievements = len(_ACHIEVEMENT.findall(cv.lower()))
    soft = sorted(SOFT_SKILLS & cv_tokens)
    criteria = {
        "technical_skills": len(matched) / len(wanted) if wanted else 0.0,
        "experience": min(cv_years / asked_years, 1.0),
        "achievements": min(achievements / 3, 1.0),
        "culture_fit": min(len(soft) / 3, 1.0),
    }
    weights = job.scoring_rubric
    total = sum(weights.values())
    match_rate = sum(criteria[name] * w for name, w in weights.items()) / total

    brief = _wanted_skills(job.study_case_brief)
    project_text = job.project_text if job.project_text is not None else cv
    covered = brief & _tokens(project_text)
    project_score = 1.0 + 9.0 * (len(covered) / len(brief) if brief else 0.0)

    cv_feedback = (
        f"Matched {len(matched)}/{len(wanted)} skills"
        + (f" ({', '.join(matched[:8])})" if matched else "")
        + (f"; missing {', '.join(missing[:8])}" if missing else "")
        + f". {cv_years} years of experience against {asked_years} asked."
    )
    project_feedback = (
        f"The project covers {len(covered)}/{len(brief)} points of the brief"
        + (f"; not addressed: {', '.join(sorted(brief - covered)[:6])}" if brief - covered else "")
        + "."
    )
    verdict = "strong" if match_rate >= 0.75 else "partial" if match_rate >= 0.45 else "weak"
    return EvaluationScores(
        cv_match_rate=round(match_rate, 4),
        project_score=round(project_score, 2),
        criteria={k: round(v, 4) for k, v in criteria.items()},
        cv_feedback=cv_feedback,
        project_feedback=project_feedback,
        overall_summary=f"A {verdict} match ({match_rate:.0%}) with a project score of {project_score:.1f}/10.",
    )
