"""The LLM evaluator: scores jobs with any OpenAI-compatible chat-completions API.

Handler path for CVQ_WORKER__HANDLER: `cv_queue.evaluation.llm:LLMEvaluator`.
"""

from cv_queue.evaluation.llm.api_errors import (
    LLMConfigError,
    LLMPermanentError,
    UnusableAnswerError,
    retry_after_floor,
)
from cv_queue.evaluation.llm.evaluator import LLMEvaluator
from cv_queue.evaluation.llm.prompt import PROMPT_VERSION

__all__ = [
    "PROMPT_VERSION",
    "LLMConfigError",
    "LLMEvaluator",
    "LLMPermanentError",
    "UnusableAnswerError",
    "retry_after_floor",
]
