"""The LLM provider the evaluator calls (CVQ_LLM__*). Its quota as a budget (rate limits, prices, budget tuning) is
cv_queue/quota_settings.py's."""

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from cv_queue.quota_settings import BudgetTuning, ModelPrice, ModelRateLimits, SpendBudget


class LLMSettings(BaseModel):
    """The OpenAI-compatible chat-completions endpoint the LLM evaluator calls (OpenAI, OpenRouter, vLLM, Ollama,
    LiteLLM: anything that speaks /v1/chat/completions)."""

    base_url: str = Field("https://api.openai.com/v1", description="The API's base URL, up to and including /v1.")
    model: str = Field("gpt-4o-mini", description="Model name as the provider spells it.")
    api_key: SecretStr | None = Field(
        None, description="API key (secret: never logged; in Dagster an EnvVar). Unset: OPENAI_API_KEY is used.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature; 0 for repeatable scores.")
    max_tokens: int = Field(1200, ge=1, description="Most tokens one answer may use.")
    request_timeout_s: float = Field(60.0, gt=0, description="Timeout of one HTTP request to the provider.")
    max_concurrent_requests: int = Field(
        256, ge=1, description="Requests in flight at once per worker process (a provider's concurrency limit).")
    file_read_threads: int = Field(
        8, ge=1,
        description="Threads that read cv_ref files, apart from the event loop's default executor (which DNS lookups "
        "need), so reads hung on a dead mount cannot starve it. A read ends with its job's timeout; a thread still "
        "stuck in it counts against worker.max_abandoned_handlers.")
    max_repairs: int = Field(
        2, ge=0, description="Follow-up calls asking the model to fix a malformed or out-of-range answer; after "
        "them the job is permanent, with the raw answer (truncated) in the dead letter.")
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = Field(
        "auto", description="How JSON is requested: JSON-schema structured output, JSON mode, or the prompt alone. "
        "auto tries json_schema and falls back when the server refuses it.")
    rate_limits: dict[str, ModelRateLimits] = Field(
        default_factory=dict,
        description="The provider's limits by model name, for the whole fleet: a JSON object such as "
        '{"gpt-4o-mini": {"requests_per_minute": 500, "tokens_per_minute": 200000}}. The live workers share them '
        "and pause intake while their share is spent. Empty: unlimited (a 429 still slows a worker down).")
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description='Prices by model name: {"gpt-4o-mini": {"input_per_million": 0.15, "output_per_million": 0.6}}. '
        "A result's usage then carries its cost, and cvq_llm_cost_total counts it. Empty: no cost is computed.")
    budget: BudgetTuning = Field(default_factory=BudgetTuning)
    spend: SpendBudget = Field(default_factory=SpendBudget)
