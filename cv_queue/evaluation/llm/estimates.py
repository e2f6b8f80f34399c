"""What a call will count and cost before it is made, and what a job's calls did count: the evaluator's books.

- `estimated_tokens`: a prompt at about four characters a token, plus the completion it may write (max_tokens), as
  a provider reserves tokens per minute before the call.
- `CallEstimates.admission_tokens`: a job's first call, before its prompt is built: the job's texts, the templates and
  the answer schema quoted in the prompt, times what the provider counted of earlier admitted jobs against their
  estimates (`learn`: this covers a CV read from a file, which only the call reads, and the provider's tokenizer).
- `CallEstimates.cost`: the most a call of so many tokens can cost (its prompt, and all of max_tokens written).
- `UsageTally`: what a job's calls counted, priced into the result's usage.
"""

import json
import math
from dataclasses import dataclass

from openai.types.chat import ChatCompletion

from cv_queue.evaluation.llm.schema import answer_schema
from cv_queue.messages import EvaluationJob, ModelUsage
from cv_queue.quota_settings import ModelPrice

#: The learned scale of admission estimates stays within these bounds (one odd answer cannot make them absurd).
SCALE_BOUNDS = (0.25, 20.0)


def estimated_tokens(texts: list[str], max_tokens: int, scale: float = 1.0, extra_chars: int = 0) -> int:
    """What a provider counts against tokens per minute before the call: the prompt (`texts` and `extra_chars` more,
    about four characters a token, times `scale`) plus the completion it may write."""
    return math.ceil((sum(len(text) for text in texts) + extra_chars) / 4 * scale) + 1 + max_tokens


class CallEstimates:
    def __init__(self, max_tokens: int, template_chars: int, price: ModelPrice | None) -> None:
        self.max_tokens = max_tokens
        self.template_chars = template_chars
        self.price = price
        self.prompt_scale = 1.0  # what providers counted of admitted jobs' prompts, over our estimate
        self._schema_chars: dict[tuple[str, ...], int] = {}  # by rubric criteria

    def admission_tokens(self, job: EvaluationJob) -> int:
        """The first call's tokens as the provider will count them (see the module docstring)."""
        criteria = tuple(job.scoring_rubric)
        schema_chars = self._schema_chars.get(criteria)
        if schema_chars is None:
            schema_chars = self._schema_chars[criteria] = len(json.dumps(answer_schema(list(criteria)), indent=2))
        texts = [job.cv_text or "", job.job_description, job.study_case_brief, job.project_text or "", *criteria]
        return estimated_tokens(texts, self.max_tokens, self.prompt_scale, self.template_chars + schema_chars)

    def learn(self, reserved_tokens: int, prompt_tokens: int) -> None:
        """An admitted call reserved at `reserved_tokens` was counted `prompt_tokens` of prompt."""
        estimated = reserved_tokens - self.max_tokens
        if estimated > 0 and prompt_tokens > 0:
            ratio = prompt_tokens / (estimated / self.prompt_scale)
            low, high = SCALE_BOUNDS
            self.prompt_scale = min(high, max(low, 0.8 * self.prompt_scale + 0.2 * ratio))

    def cost(self, tokens: int) -> float:
        """The most a call reserved at `tokens` (its prompt and all of max_tokens) can cost; 0 without a price."""
        if self.price is None:
            return 0.0
        completion = min(tokens, self.max_tokens)
        return self.price.cost(tokens - completion, completion)


@dataclass
class UsageTally:
    """What one job's calls counted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    calls: int = 0
    model: str = ""

    def add(self, completion: ChatCompletion) -> None:
        self.calls += 1
        self.model = completion.model or self.model
        if completion.usage is not None:
            self.prompt_tokens += completion.usage.prompt_tokens
            self.completion_tokens += completion.usage.completion_tokens
            self.total_tokens += completion.usage.total_tokens

    def usage(self, prompt_version: str, price: ModelPrice | None) -> ModelUsage:
        cost = price.cost(self.prompt_tokens, self.completion_tokens) if price is not None else None
        return ModelUsage(
            model=self.model, prompt_version=prompt_version, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, total_tokens=self.total_tokens, calls=max(self.calls, 1),
            cost=cost)
