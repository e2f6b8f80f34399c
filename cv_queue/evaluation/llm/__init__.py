"""The LLM evaluator: scores jobs with any OpenAI-compatible chat-completions API.

Handler path for CVQ_WORKER__HANDLER: `cv_queue.evaluation.llm:LLMEvaluator` (async: the one to deploy), or
`cv_queue.evaluation.llm:ThreadedLLMEvaluator` (the same on the thread handler path, for comparison).
"""

from cv_queue.evaluation.llm.api_errors import (
    LLMConfigError,
    LLMPermanentError,
    UnusableAnswerError,
)
from cv_queue.evaluation.llm.evaluator import LLMEvaluator
from cv_queue.evaluation.llm.prompt import PROMPT_VERSION
from cv_queue.evaluation.llm.rate_headers import retry_after_hint
from cv_queue.evaluation.llm.threaded import ThreadedLLMEvaluator

__all__ = [
    "PROMPT_VERSION",
    "LLMConfigError",
    "LLMEvaluator",
    "LLMPermanentError",
    "ThreadedLLMEvaluator",
    "UnusableAnswerError",
    "retry_after_hint",
]
