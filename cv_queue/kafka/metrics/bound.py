"""prometheus-client children bound to their labels once: replay's counters by category, and LLM usage."""

from cv_queue.errors import ErrorCategory
from cv_queue.kafka.metrics import families as f
from cv_queue.messages import ModelUsage


class ReplayMetrics:
    """Replayed and parked letters by category, counted once their transaction committed."""

    def __init__(self) -> None:
        self.replayed = {c: f.DLQ_REPLAYED.labels(c.value) for c in ErrorCategory}
        self.parked = {c: f.DLQ_PARKED.labels(c.value) for c in ErrorCategory}


def count_llm_usage(usage: ModelUsage) -> None:
    """Tokens and calls of one LLM answer. Once per LLM job (~1 s of work), so the label lookup is cheap."""
    f.LLM_TOKENS.labels(usage.model, "prompt").inc(usage.prompt_tokens)
    f.LLM_TOKENS.labels(usage.model, "completion").inc(usage.completion_tokens)
    f.LLM_REQUESTS.labels(usage.model).inc(usage.calls)
