"""The prompt: versioned template files shipped in the package, filled from the job.

Each folder under prompts/ (v1, v2, ...) is one prompt version: system.md, user.md and repair.md, filled with
string.Template ($name). The newest folder is PROMPT_VERSION; the version that produced an answer is recorded in the
result, so a score can always be traced to the exact wording that asked for it.
"""

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import unquote, urlparse

from openai.types.chat import ChatCompletionMessageParam

from cv_queue.errors import PermanentJobError
from cv_queue.evaluation.files import FileReads
from cv_queue.messages import EvaluationJob
from cv_queue.settings import LLMSettings

_VERSION_FOLDER = re.compile(r"v(\d+)")
_NO_PROJECT = "(No project report was submitted. Judge the project from what the CV says about projects.)"


def _prompts_root() -> Traversable:
    return resources.files(__package__) / "prompts"


def available_versions() -> list[str]:
    """Prompt versions shipped in the package, oldest first."""
    folders = [entry.name for entry in _prompts_root().iterdir() if entry.is_dir()]
    numbered = [(int(match.group(1)), name) for name in folders if (match := _VERSION_FOLDER.fullmatch(name))]
    return [name for _, name in sorted(numbered)]


#: The prompt version used unless an evaluator asks for another: the newest folder.
PROMPT_VERSION = available_versions()[-1]


@dataclass(frozen=True)
class PromptTemplates:
    version: str
    system: Template
    user: Template
    repair: Template


@cache
def load_templates(version: str = PROMPT_VERSION) -> PromptTemplates:
    if version not in available_versions():
        raise ValueError(f"unknown prompt version {version!r}; shipped: {available_versions()}")
    folder = _prompts_root() / version

    def read(name: str) -> Template:
        return Template((folder / name).read_text(encoding="utf-8"))

    return PromptTemplates(version, read("system.md"), read("user.md"), read("repair.md"))


def _rubric_lines(rubric: dict[str, float]) -> str:
    total = sum(rubric.values())
    return "\n".join(
        f"- {name}: weight {weight:g} ({weight / total:.0%} of cv_match_rate)" for name, weight in rubric.items()
    )


def build_messages(
    templates: PromptTemplates, job: EvaluationJob, cv_text: str, schema: dict[str, Any]
) -> list[ChatCompletionMessageParam]:
    """The system and user messages for `job`. The schema is quoted in the prompt too: servers without structured
    output have nothing else to go by."""
    user = templates.user.substitute(
        job_description=job.job_description.strip(),
        study_case_brief=job.study_case_brief.strip(),
        cv_text=cv_text.strip(),
        project_text=job.project_text.strip() if job.project_text else _NO_PROJECT,
        rubric=_rubric_lines(job.scoring_rubric),
        answer_schema=json.dumps(schema, indent=2),
    )
    return [
        {"role": "system", "content": templates.system.substitute()},
        {"role": "user", "content": user},
    ]


def repair_messages(
    templates: PromptTemplates, base: list[ChatCompletionMessageParam], raw_answer: str, error: str
) -> list[ChatCompletionMessageParam]:
    """The conversation for a repair call: the original prompt, the unusable answer, and what was wrong with it.
    Only the latest answer is kept, so a second repair costs no more than the first."""
    return [
        *base,
        {"role": "assistant", "content": raw_answer},
        {"role": "user", "content": templates.repair.substitute(error=error)},
    ]


def _cv_path(ref: str) -> Path:
    parsed = urlparse(ref)
    if parsed.scheme != "file":
        raise PermanentJobError(f"cv_ref scheme {parsed.scheme!r} is not supported (use file:///abs/path.txt)")
    return Path(unquote(parsed.path))


def _read_cv_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PermanentJobError(f"cv_ref not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentJobError(f"cv_ref unreadable: {path}: {exc}") from exc


#: For callers that bring no FileReads of their own (its threads start only when a read needs one).
DEFAULT_FILE_READS = FileReads(LLMSettings.model_fields["file_read_threads"].default)


async def read_cv_text(job: EvaluationJob, reads: FileReads | None = None) -> str:
    """The CV's text, inline or from its file:// reference, read off the event loop on `reads`' bounded threads
    (not the loop's default executor, which a read hung on a dead mount would fill: see files.py)."""
    if job.cv_text is not None:
        return job.cv_text
    path = _cv_path(job.cv_ref or "")  # a wrong reference fails as permanent without a thread
    return await (reads or DEFAULT_FILE_READS).call(_read_cv_file, path)
