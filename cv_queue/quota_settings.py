"""Settings of the provider's quota as a budget: rate limits and prices per model, and how workers share them.

Part of LLMSettings (CVQ_LLM__RATE_LIMITS, CVQ_LLM__PRICES as JSON objects by model name; CVQ_LLM__BUDGET__*), kept
apart so that settings.py stays one screen per section."""

from pydantic import BaseModel, Field


class ModelRateLimits(BaseModel):
    """A model's limits at the provider, for the whole fleet (every worker with the same API key)."""

    requests_per_minute: float | None = Field(None, gt=0, description="Requests per minute; unset: unlimited.")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Tokens per minute (a call counts its prompt plus max_tokens, as providers reserve "
        "them); unset: unlimited.")


class ModelPrice(BaseModel):
    """What a model costs, in the currency of your bill, per million tokens."""

    input_per_million: float = Field(ge=0, description="Price of a million prompt tokens.")
    output_per_million: float = Field(ge=0, description="Price of a million completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1_000_000


class BudgetTuning(BaseModel):
    """How each worker keeps to its share of a model's limits (see cv_queue/evaluation/llm/budget.py)."""

    burst_s: float = Field(
        2.0, gt=0, description="A worker may spend this many seconds of its share at once (its bucket's size).")
    fleet_refresh_s: float = Field(
        5.0, gt=0, description="How often a worker counts the live workers (the presence group) to set its share.")
    decrease: float = Field(
        0.5, gt=0, lt=1, description="On a 429, the worker's rate is multiplied by this (at most once per second).")
    increase_per_s: float = Field(
        0.05, gt=0, description="Each second without a 429, the rate grows by this fraction of the share, up to it.")
    min_factor: float = Field(
        0.05, gt=0, le=1, description="The rate never drops below this fraction of the share.")
    max_hold_s: float = Field(
        60.0, gt=0, le=3600, description="Longest a 429's Retry-After holds every call of the worker (the refused job "
        "itself waits all of it on the retry topic): a provider asking for hours must not freeze the worker.")
    low_remaining: float = Field(
        0.05, ge=0, lt=1, description="When the provider's x-ratelimit-remaining-* falls under this fraction of its "
        "x-ratelimit-limit-*, the worker slows down as on a 429 (the provider sees the whole fleet).")


class SpendBudget(BaseModel):
    """A limit on what the fleet spends per window (from llm.prices), shared by every worker of the namespace."""

    limit: float | None = Field(
        None, gt=0, description="Most the fleet may spend per window, in the currency of llm.prices. When it is "
        "spent, workers pause intake (nothing fails) until the next window. Unset: no spend limit.")
    window_s: int = Field(
        86400, ge=10, le=31 * 86400, description="The window, in seconds, aligned to the Unix epoch (86400: a UTC "
        "day from midnight; 3600: an hour).")
    warn_at: float = Field(
        0.8, gt=0, le=1, description="The llm_spend asset check turns WARN at this share of the limit, ERROR at all "
        "of it.")
    refresh_s: float = Field(
        5.0, gt=0, le=300, description="How often a worker publishes its spend to the spend ledger topic and reads "
        "the fleet's. The fleet may overspend by what its calls in flight and this interval cost.")

    def window_start(self, now_s: float) -> int:
        """The start (Unix seconds) of the window that `now_s` falls in."""
        return int(now_s // self.window_s) * self.window_s
