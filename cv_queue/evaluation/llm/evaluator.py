"""LLMEvaluator: a job handler for any OpenAI-compatible chat-completions API, through the official openai SDK.

One evaluation is one chat completion, plus up to `max_repairs` follow-ups when the answer is malformed or out of
range. The SDK never retries (max_retries=0): the queue does, with backoff, the retry topic and the DLQ, and an SDK
retry underneath would hide both the failure and its cost.

Every call spends the model's budget (budget.py): the worker's async pool asks `admit(job)` before it starts a job,
which reserves the first call's request and estimated tokens, or says how long to wait (the job then waits in the
pool, not in a call the provider would refuse). Repair calls, and calls of a job started without `admit` (the
threaded evaluator), reserve their own, waiting on the loop. The usage that comes back settles the tokens, and prices
it (llm.prices) into the result's usage. With llm.spend.limit, `admit` also reserves the call's most expensive
outcome against the fleet's spend in the window (spend.py), and holds every job once the window is spent.
"""

import asyncio
import logging
import os
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from pydantic import SecretStr

from cv_queue.evaluation.files import FileReads
from cv_queue.evaluation.handler import JobContext
from cv_queue.evaluation.llm.api_errors import (
    LLMConfigError,
    UnusableAnswerError,
    hides_cause,
    map_api_error,
)
from cv_queue.evaluation.llm.budget import ProviderBudget, Reservation
from cv_queue.evaluation.llm.estimates import CallEstimates, UsageTally, estimated_tokens
from cv_queue.evaluation.llm.parsing import AnswerError, parse_answer
from cv_queue.evaluation.llm.prompt import (
    PROMPT_VERSION,
    build_messages,
    load_templates,
    read_cv_text,
    repair_messages,
)
from cv_queue.evaluation.llm.rate_headers import retry_after_hint
from cv_queue.evaluation.llm.schema import FALLBACK_ORDER, OutputMode, answer_schema, next_mode, response_format
from cv_queue.evaluation.llm.spend import SpendGate
from cv_queue.messages import Evaluation, EvaluationJob
from cv_queue.quota_settings import ModelRateLimits
from cv_queue.settings import LLMSettings, QueueSettings

log = logging.getLogger(__name__)

#: How much of an unusable answer a dead letter keeps (its error message is capped at 2,000 characters).
RAW_ANSWER_CHARS = 1500
_ERROR_CHARS = 350


def resolve_api_key(settings: LLMSettings) -> SecretStr:
    """CVQ_LLM__API_KEY, else OPENAI_API_KEY; neither is a configuration error."""
    if settings.api_key is not None and settings.api_key.get_secret_value():
        return settings.api_key
    from_env = os.environ.get("OPENAI_API_KEY", "")
    if from_env:
        return SecretStr(from_env)
    raise LLMConfigError(
        "no LLM API key: set CVQ_LLM__API_KEY or OPENAI_API_KEY (a server that needs no key, such as a local "
        "Ollama or vLLM, accepts any non-empty value)")


def _answer_text(completion: ChatCompletion) -> str:
    if not completion.choices:
        raise AnswerError("the response has no choices")
    message = completion.choices[0].message
    if message.content is None:
        if message.refusal:
            raise AnswerError(f"the model refused: {message.refusal}")
        raise AnswerError("the answer is empty")
    return message.content


def _unusable(raw: str, error: str, tally: UsageTally) -> UnusableAnswerError:
    error = error if len(error) <= _ERROR_CHARS else error[:_ERROR_CHARS] + "..."
    kept = raw if len(raw) <= RAW_ANSWER_CHARS else raw[:RAW_ANSWER_CHARS] + " [truncated]"
    return UnusableAnswerError(
        f"unusable LLM answer after {tally.calls} calls ({tally.calls - 1} repairs): {error} | raw answer "
        f"({len(raw)} chars): {kept}",
        raw_answer=raw, validation_error=error)


class LLMEvaluator:
    """Scores a job with an OpenAI-compatible chat model. Async: the worker runs it on its event loop.

    Built with keyword options that override `QueueSettings().llm` (CVQ_LLM__*), e.g. {"model": "...",
    "base_url": "..."}. The API key never comes from options: options are configuration that gets shown and logged.
    """

    uses_llm_settings = True  # load_handler passes the queue's LLM settings (in Dagster: with an EnvVar key)

    def __init__(self, *, settings: LLMSettings | None = None, prompt_version: str | None = None,
                 file_reads: FileReads | None = None, budget: ProviderBudget | None = None,
                 spend: SpendGate | None = None, **overrides: Any) -> None:
        if "api_key" in overrides:
            raise LLMConfigError("api_key is not an evaluator option: set CVQ_LLM__API_KEY or OPENAI_API_KEY")
        unknown = sorted(set(overrides) - set(LLMSettings.model_fields))
        if unknown:
            raise LLMConfigError(f"unknown LLM options {unknown}; known: {sorted(LLMSettings.model_fields)}")
        if settings is not None and not isinstance(settings, LLMSettings):
            raise LLMConfigError("settings must be an LLMSettings (put plain options at the top level instead)")
        base = settings if settings is not None else QueueSettings().llm
        self.settings = LLMSettings.model_validate({**base.model_dump(), **overrides})
        self._api_key = resolve_api_key(self.settings)
        # cv_ref files are read on threads of their own, never the loop's default executor (see files.py).
        self._reads = file_reads or FileReads(self.settings.file_read_threads)
        self.templates = load_templates(prompt_version or PROMPT_VERSION)
        requested = self.settings.structured_output
        self._mode: OutputMode = FALLBACK_ORDER[0] if requested == "auto" else requested
        self._may_fall_back = requested == "auto"
        self._mode_confirmed = not self._may_fall_back
        self._client: openai.AsyncOpenAI | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.budget = budget or ProviderBudget(
            self.settings.rate_limits.get(self.settings.model, ModelRateLimits()), self.settings.budget)
        self.price = self.settings.prices.get(self.settings.model)
        if self.settings.spend.limit is not None and self.price is None:
            raise LLMConfigError(
                f"llm.spend.limit is set but llm.prices has no price for model {self.settings.model!r}: its calls' "
                "cost could not be counted (add it to CVQ_LLM__PRICES, or unset CVQ_LLM__SPEND__LIMIT)")
        self.spend = spend or SpendGate(self.settings.spend)
        template_chars = sum(len(t.template) for t in (self.templates.system, self.templates.user))
        self.estimates = CallEstimates(self.settings.max_tokens, template_chars, self.price)
        # By id() of the job admitted: the job (so that a later job at the same address is not mistaken for it) and
        # its first call's reservation.
        self._reserved: dict[int, tuple[EvaluationJob, Reservation]] = {}
        self._held: set[int] = set()  # jobs admit() told to wait, not yet admitted
        self.held = 0  # jobs that had to wait for budget
        self.rate_limited = 0  # 429s
        self.cost = 0.0  # of every answered call, from llm.prices (a failed job's calls cost too)

    def __repr__(self) -> str:
        return f"LLMEvaluator(model={self.settings.model!r}, base_url={self.settings.base_url!r})"

    @property
    def output_mode(self) -> OutputMode:
        """How JSON is requested now (after any fallback `auto` settled on)."""
        return self._mode

    @property
    def prompt_version(self) -> str:
        return self.templates.version

    @property
    def stuck_threads(self) -> int:
        """cv_ref reads still running after their jobs gave up on them: the worker counts them as abandoned."""
        return self._reads.stuck

    @property
    def spend_exhausted(self) -> bool:
        """The fleet spent llm.spend.limit in this window: the worker pauses intake until the next one."""
        return self.spend.wait_s() > 0

    def admit(self, job: EvaluationJob) -> float:
        """Reserve the budget of the job's first call: 0 when it may start now, else the seconds to wait (call
        again then). While the spend limit is reached, no job is admitted until the next window."""
        tokens = self.estimates.admission_tokens(job)
        key = id(job)
        spend_wait = self.spend.try_reserve(self.estimates.cost(tokens))
        if spend_wait > 0:
            self._hold(key)
            return spend_wait
        reservation, wait = self.budget.try_reserve(tokens)
        if reservation is None:
            self.spend.release(self.estimates.cost(tokens))
            self._hold(key)
            return wait
        self._held.discard(key)
        self._reserved[key] = (job, reservation)
        return 0.0

    def _hold(self, key: int) -> None:
        if key not in self._held:
            self._held.add(key)
            self.held += 1

    def set_fleet_size(self, live_workers: int) -> None:
        """The live workers that share the model's limits (the worker counts them in the presence group)."""
        self.budget.set_fleet_size(live_workers)
        self.spend.set_fleet_size(live_workers)

    async def __call__(self, job: EvaluationJob, ctx: JobContext) -> Evaluation:
        admitted = self._reserved.pop(id(job), None)
        reservation = admitted[1] if admitted is not None and admitted[0] is job else None
        try:
            cv_text = await read_cv_text(job, self._reads)
        except BaseException:
            if reservation is not None:  # no call was made for it
                self._release(reservation)
            raise
        criteria = list(job.scoring_rubric)
        schema = answer_schema(criteria)
        prompt = build_messages(self.templates, job, cv_text, schema)
        messages = prompt
        tally = UsageTally(model=self.settings.model)
        while True:
            completion = await self._complete(messages, schema, reservation)
            reservation = None  # spent by that call: repairs reserve their own
            tally.add(completion)
            raw = ""
            try:
                raw = _answer_text(completion)
                scores = parse_answer(raw, criteria)
            except AnswerError as exc:
                problem = str(exc) + self._cut_off_hint(completion)
                if tally.calls > self.settings.max_repairs:
                    raise _unusable(raw, problem, tally) from None
                messages = repair_messages(self.templates, prompt, raw, problem)
                continue
            usage = tally.usage(self.templates.version, self.price)
            return Evaluation(scores=scores, usage=usage)

    def _cut_off_hint(self, completion: ChatCompletion) -> str:
        # A truncated answer is malformed for a reason the model cannot see; the dead letter should name the cure.
        if completion.choices and completion.choices[0].finish_reason == "length":
            return (f" (the answer was cut off at max_tokens={self.settings.max_tokens}: be brief, or raise "
                    "CVQ_LLM__MAX_TOKENS)")
        return ""

    async def aclose(self) -> None:
        """Close the HTTP connections (the worker calls this on shutdown, if it can)."""
        for _job, reservation in self._reserved.values():  # admitted jobs that never ran: consumed again later
            self._release(reservation)
        self._reserved.clear()
        self._held.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _client_for_this_loop(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        # Made lazily, inside the running loop: connections and the semaphore belong to one event loop, and a
        # handler is constructed before its loop exists. A new loop (a restarted worker loop) gets new ones.
        loop = asyncio.get_running_loop()
        if self._client is None or self._semaphore is None or self._loop is not loop:
            # aiohttp under the SDK: half the CPU per call of the default httpx transport, which matters at a
            # thousand calls in flight per worker.
            self._client = openai.AsyncOpenAI(
                http_client=openai.DefaultAioHttpClient(timeout=self.settings.request_timeout_s),
                api_key=self._api_key.get_secret_value(), base_url=self.settings.base_url,
                timeout=self.settings.request_timeout_s, max_retries=0)
            self._semaphore = asyncio.Semaphore(self.settings.max_concurrent_requests)
            self._loop = loop
        return self._client, self._semaphore

    async def _reserve(self, messages: list[ChatCompletionMessageParam]) -> Reservation:
        """Wait for the budget of one call with these messages."""
        texts = [str(message.get("content") or "") for message in messages]
        tokens = estimated_tokens(texts, self.settings.max_tokens)
        while True:
            reservation, wait = self.budget.try_reserve(tokens)
            if reservation is not None:
                return reservation
            await asyncio.sleep(wait)

    async def _complete(self, messages: list[ChatCompletionMessageParam], schema: dict[str, Any],
                        reservation: Reservation | None = None) -> ChatCompletion:
        """One chat completion, falling back to weaker structured output while `auto` has not settled. Each
        request spends a reservation of the budget (`reservation`, else one reserved here), settled or released on
        every way out."""
        try:
            client, semaphore = self._client_for_this_loop()
        except BaseException:
            if reservation is not None:
                self._release(reservation)
            raise
        mode = self._mode
        while True:
            fmt = response_format(mode, schema)
            admitted = reservation is not None
            spent, reservation = reservation or await self._reserve_call(messages), None
            estimate = self.estimates.cost(spent.tokens)
            try:
                async with semaphore:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=self.settings.model, messages=messages, temperature=self.settings.temperature,
                        max_tokens=self.settings.max_tokens,
                        # The same JSON on the wire; as extra_body the SDK does not walk the whole schema through
                        # its typed-parameter transform on every call (a third of the client's CPU per call).
                        extra_body={"response_format": fmt} if fmt is not None else None,
                    )
                completion = raw.parse()
            except openai.RateLimitError as exc:
                self._refund(spent, estimate, 0)  # refused before any work: the provider counted no tokens
                self.rate_limited += 1
                self.budget.refused(retry_after_hint(exc.response.headers))
                raise map_api_error(exc, self.settings, self._api_key.get_secret_value()) from exc
            except openai.BadRequestError as exc:
                self._refund(spent, estimate, 0)
                weaker = next_mode(mode) if self._may_fall_back and not self._mode_confirmed else None
                if weaker is None:
                    raise map_api_error(exc, self.settings, self._api_key.get_secret_value()) from exc
                log.info("LLM server at %s refused response_format %s (%s); trying %s",
                         self.settings.base_url, mode, exc.status_code, weaker)
                mode = weaker
                continue
            except openai.APIError as exc:
                # Not billed by OpenAI-style providers; what the provider counted is not known: the estimate.
                self._refund(spent, estimate, spent.tokens)
                mapped = map_api_error(exc, self.settings, self._api_key.get_secret_value())
                if hides_cause(exc):
                    raise mapped from None
                raise mapped from exc
            except BaseException:
                self._refund(spent, estimate, spent.tokens)
                raise
            try:
                self.budget.observe(raw.headers)
            finally:
                self._account(completion, spent, estimate, admitted)
            self._settle(mode)
            return completion

    def _account(self, completion: ChatCompletion, spent: Reservation, estimate: float, admitted: bool) -> None:
        """Settle an answered call's budget and spend from its usage (never raises: a usage with missing counts
        settles at the estimates, and costs nothing we can tell)."""
        usage = completion.usage
        prompt = getattr(usage, "prompt_tokens", None)
        written = getattr(usage, "completion_tokens", None)
        counted = isinstance(prompt, int) and isinstance(written, int)
        # As the provider counts it: the prompt, and the max_tokens it reserved for the answer.
        self.budget.settle(spent, prompt + self.settings.max_tokens if counted else spent.tokens)
        if admitted and counted:
            self.estimates.learn(spent.tokens, prompt)
        cost = self.price.cost(prompt, written) if self.price is not None and counted else 0.0
        self.cost += cost
        self.spend.settle(estimate, cost)

    async def _reserve_call(self, messages: list[ChatCompletionMessageParam]) -> Reservation:
        """A call that was not admitted (a repair, the threaded evaluator): it waits for the rate budget, and its
        spend is reserved without asking (its job already started)."""
        reservation = await self._reserve(messages)
        self.spend.force_reserve(self.estimates.cost(reservation.tokens))
        return reservation

    def _refund(self, reservation: Reservation, estimate: float, counted_tokens: int) -> None:
        """A call that was refused or failed: no spend, and the tokens the provider counted (or may have)."""
        self.spend.release(estimate)
        self.budget.settle(reservation, counted_tokens)

    def _release(self, reservation: Reservation) -> None:
        """A reservation (budget and spend) whose call never started."""
        self.budget.release(reservation)
        self.spend.release(self.estimates.cost(reservation.tokens))

    def _settle(self, mode: OutputMode) -> None:
        """Remember a mode once a call in it succeeded. Only success settles it: a 400 in every mode means the
        request itself is wrong (too long, say), not that the server lacks structured output."""
        if FALLBACK_ORDER.index(mode) > FALLBACK_ORDER.index(self._mode):
            log.warning("LLM server at %s: using response_format %s from now on", self.settings.base_url, mode)
            self._mode = mode
        self._mode_confirmed = True
