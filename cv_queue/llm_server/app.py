"""A local OpenAI-compatible chat-completions server: the stand-in for the paid API in tests.

POST /v1/chat/completions answers like the real API (id, object "chat.completion", created, model, choices, usage),
GET /v1/models lists one model, GET /stats returns counters and POST /stats/reset zeroes them. Behaviour is scripted
per request by directives in the prompt (see answers.py) and server-wide by ServerOptions:

    [[llm:429:retry-after=2]]     429; every option is a response header (retry-after, retry-after-ms,
                                  x-ratelimit-reset-requests=6m0s, ...); retry-after-date=N sends an HTTP date N s on
    [[llm:500]] [[llm:400]] ...   that status, with an OpenAI-style error body
    [[llm:hang]]                  never answers (until the client gives up, or hang_s)
    [[llm:sleep=MS]]              this request takes MS milliseconds
    [[llm:malformed]]             unparseable prose, always; malformed-once: only before the first repair
    [[llm:out-of-range]]          valid JSON with scores above their maxima; out-of-range-once likewise
    [[llm:fenced]]                the valid answer wrapped in prose and a ```json fence
    [[llm:cut-off]]               the valid answer cut in half, finish_reason "length" (max_tokens reached)

With requests_per_minute or tokens_per_minute set, the server enforces them per API key like a provider, with its
headers (quota.py): a request over the limit gets 429 with retry-after, and every response says how full the limits
are.

A valid answer satisfies the JSON schema the request asked for (response_format, or the schema quoted in the
prompt), with values derived from a hash of the prompt: the same request always gets the same scores.
"""

import asyncio
import hashlib
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from aiohttp import web

from cv_queue.evaluation.simulated import lognormal_params
from cv_queue.llm_server.answers import (
    Directive,
    answer_for_schema,
    find_directives,
    malformed_answer,
    message_texts,
    schema_in_prompt,
)
from cv_queue.llm_server.quota import Quotas

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "not_found_error", 422: "invalid_request_error", 429: "rate_limit_error"}


@dataclass
class ServerOptions:
    latency_ms: float = 0.0  # every request's latency (the mean, with latency_p99_ms)
    latency_p99_ms: float | None = None  # set: lognormal latency with this p99
    json_schema_supported: bool = True  # False: 400 on response_format json_schema, like older vLLM
    json_object_supported: bool = True
    api_key: str | None = None  # set: 401 unless "Authorization: Bearer <api_key>"
    hang_s: float = 600.0  # how long [[llm:hang]] waits when the client does not hang up
    seed: int = 0
    requests_per_minute: float | None = None  # set: enforced per API key (quota.py)
    tokens_per_minute: float | None = None


@dataclass
class ServerStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    response_formats: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        # In place: handlers running now hold this object.
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.outcomes.clear()
        self.response_formats.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.requests, "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                "outcomes": dict(self.outcomes), "response_formats": dict(self.response_formats)}


OPTIONS_KEY = web.AppKey("options", ServerOptions)
STATS_KEY = web.AppKey("stats", ServerStats)
QUOTAS_KEY = web.AppKey("quotas", Quotas)


def _error(status: int, message: str, headers: dict[str, str] | None = None, param: str | None = None
           ) -> web.Response:
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": None}}
    return web.json_response(body, status=status, headers=headers)


def _latency_s(options: ServerOptions, directives: list[Directive], rng: random.Random) -> float:
    for directive in directives:
        if directive.name.startswith("sleep="):
            return float(directive.name.split("=", 1)[1]) / 1000
    if options.latency_p99_ms:
        return rng.lognormvariate(*lognormal_params(options.latency_ms, options.latency_p99_ms)) / 1000
    return options.latency_ms / 1000


def _status_response(directive: Directive, status: int) -> web.Response:
    headers = {}
    for name, value in directive.options.items():
        if name == "retry-after-date":
            headers["retry-after"] = formatdate(time.time() + float(value), usegmt=True)
        else:
            headers[name] = value
    return _error(status, f"scripted {status} from the local test server", headers)


def _format_refusal(options: ServerOptions, fmt: dict[str, Any] | None) -> web.Response | None:
    kind = (fmt or {}).get("type")
    if (kind == "json_schema" and not options.json_schema_supported) or (
            kind == "json_object" and not options.json_object_supported):
        return _error(400, f"response_format type {kind} is not supported by this server", param="response_format")
    return None


def _content(directives: list[Directive], messages: list[dict[str, Any]], fmt: dict[str, Any] | None,
             seed: str) -> tuple[str, str]:
    """(outcome, answer text) for a request that gets an answer."""
    is_repair = any(message.get("role") == "assistant" for message in messages)
    names = {directive.name for directive in directives}
    if "malformed" in names or ("malformed-once" in names and not is_repair):
        return "malformed", malformed_answer(seed)
    schema = ((fmt or {}).get("json_schema") or {}).get("schema") or schema_in_prompt(messages) or {}
    out_of_range = "out-of-range" in names or ("out-of-range-once" in names and not is_repair)
    answer = json.dumps(answer_for_schema(schema, seed, out_of_range=out_of_range))
    if "cut-off" in names:
        return "cut_off", answer[: len(answer) // 2]
    if "fenced" in names:
        return "fenced", f"Here is the evaluation you asked for:\n```json\n{answer}\n```\nLet me know if you need more."
    return ("out_of_range" if out_of_range else "ok"), answer


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Roughly four characters a token, like English text through a BPE tokenizer."""
    return max(1, math.ceil(sum(len(text) for text in message_texts(messages)) / 4))


def _completion(model: str, messages: list[dict[str, Any]], content: str, finish_reason: str) -> dict[str, Any]:
    prompt_tokens_used = prompt_tokens(messages)
    completion_tokens = max(1, math.ceil(len(content) / 4))
    return {
        "id": "chatcmpl-" + hashlib.sha256(f"{time.time_ns()}{content}".encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens_used, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens_used + completion_tokens},
    }


async def chat_completions(request: web.Request) -> web.Response:
    options, stats = request.app[OPTIONS_KEY], request.app[STATS_KEY]
    stats.requests += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        outcome, response = await _answer(request, options)
        stats.outcomes[outcome] += 1
        return response
    except asyncio.CancelledError:
        stats.outcomes["client_gone"] += 1  # the client hung up first (a timeout, or a hang directive)
        raise
    finally:
        stats.in_flight -= 1


async def _answer(request: web.Request, options: ServerOptions) -> tuple[str, web.Response]:
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if options.api_key is not None and presented != options.api_key:
        # The real API echoes the presented key (partly masked); echoing it whole proves the client scrubs it.
        return "unauthorized", _error(401, f"Incorrect API key provided: {presented}.")
    try:
        body = await request.json()
        messages = body["messages"]
        model = body["model"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return "bad_request", _error(400, "the body must be JSON with model and messages")
    quotas = request.app[QUOTAS_KEY]
    limit_headers: dict[str, str] = {}
    if quotas.enabled:
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        if not isinstance(asked, int) or asked < 0:
            return "bad_request", _error(400, "max_tokens must be a non-negative integer", param="max_tokens")
        verdict = quotas.charge(presented, prompt_tokens(messages) + asked)
        if not verdict.admitted:
            return "rate_limited", _error(429, verdict.message, verdict.headers)
        limit_headers = verdict.headers
    outcome, response = await _respond(request, options, body, messages, model)
    response.headers.update(limit_headers)
    return outcome, response


async def _respond(request: web.Request, options: ServerOptions, body: dict[str, Any],
                   messages: list[dict[str, Any]], model: str) -> tuple[str, web.Response]:
    fmt = body.get("response_format")
    request.app[STATS_KEY].response_formats[(fmt or {}).get("type", "none")] += 1
    directives = find_directives(messages)
    seed = f"{options.seed}|" + "\n".join(text for text in message_texts(messages)[:2])
    rng = random.Random(f"{seed}|{request.app[STATS_KEY].requests}")
    await asyncio.sleep(_latency_s(options, directives, rng))
    for directive in directives:
        if directive.name == "hang":
            await asyncio.sleep(options.hang_s)
            return "hang", _error(504, "the scripted hang ended")
        if directive.status is not None:
            return str(directive.status), _status_response(directive, directive.status)
    refusal = _format_refusal(options, fmt)
    if refusal is not None:
        return "unsupported_response_format", refusal
    outcome, content = _content(directives, messages, fmt, seed)
    finish_reason = "length" if outcome == "cut_off" else "stop"
    return outcome, web.json_response(_completion(model, messages, content, finish_reason))


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": "cvq-local-model", "object": "model", "created": 0, "owned_by": "cv-queue-tests"}]})


def stats_snapshot(app: web.Application) -> dict[str, Any]:
    """The counters, and per API key what the quotas admitted, charged and refused."""
    return {**app[STATS_KEY].snapshot(), "quota": app[QUOTAS_KEY].snapshot()}


def reset_stats_of(app: web.Application) -> None:
    app[STATS_KEY].reset()
    app[QUOTAS_KEY].reset()


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(stats_snapshot(request.app))


async def reset_stats(request: web.Request) -> web.Response:
    reset_stats_of(request.app)
    return web.json_response({"reset": True})


def make_app(options: ServerOptions | None = None) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[OPTIONS_KEY] = options or ServerOptions()
    app[STATS_KEY] = ServerStats()
    app[QUOTAS_KEY] = Quotas(app[OPTIONS_KEY].requests_per_minute, app[OPTIONS_KEY].tokens_per_minute)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/stats/reset", reset_stats)
    return app
