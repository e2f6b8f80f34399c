"""From the openai SDK's exceptions to the queue's failure categories, by exception type.

Timeouts, dropped connections and 5xx are transient; 429 is rate_limited with the provider's Retry-After as the wait;
the other 4xx cannot improve on retry and are permanent, and the ones a deployment causes (401, 403, 404) say which
setting to check. No message built here may carry the API key: providers echo it back (OpenAI masks it only in part).
"""

import re

import openai

from cv_queue.errors import JobError, PermanentJobError, RateLimitedError, TransientJobError
from cv_queue.evaluation.llm.rate_headers import retry_after_hint
from cv_queue.settings import LLMSettings

_KEY_SETTING = "CVQ_LLM__API_KEY (or OPENAI_API_KEY)"
_MAX_DETAIL_CHARS = 300
# What a provider's echo of a key looks like: OpenAI-style "sk-..." tokens, masked or not.
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{3,}")
# 408 and 409 are the 4xx the SDK itself would retry: a slow upstream and a lock conflict.
_RETRYABLE_4XX = frozenset({408, 409})


class LLMConfigError(ValueError):
    """The evaluator cannot be built from its settings (no API key, an option that does not exist)."""


class LLMPermanentError(PermanentJobError):
    """The provider refused the request for a reason retrying cannot cure."""


class UnusableAnswerError(PermanentJobError):
    """The model's answer stayed malformed or out of range through every repair call.

    Deliberately not a MalformedOutputError: the evaluator has already made its own repair calls, and the worker
    would otherwise call the whole evaluator again on top of them."""

    def __init__(self, message: str, raw_answer: str, validation_error: str) -> None:
        super().__init__(message)
        self.raw_answer = raw_answer
        self.validation_error = validation_error


def scrub(text: str, secret: str | None) -> str:
    """`text` without the key and without anything shaped like one."""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("sk-***", text)


def _detail(exc: openai.APIError, secret: str | None) -> str:
    text = scrub(str(exc), secret)
    return text if len(text) <= _MAX_DETAIL_CHARS else text[:_MAX_DETAIL_CHARS] + "..."


#: What a deployment got wrong, by the SDK's exception type: the setting to check.
_PERMANENT_HINTS: dict[type[openai.APIStatusError], str] = {
    openai.AuthenticationError: "the LLM API rejected the API key (401): check {key}.",
    openai.PermissionDeniedError: "the API key may not use model {model!r} (403): check the key's permissions ({key}) "
    "and the model name CVQ_LLM__MODEL.",
    openai.NotFoundError: "model or endpoint not found (404): check CVQ_LLM__MODEL ({model!r}) and "
    "CVQ_LLM__BASE_URL ({base_url!r}).",
}


def _status_error(exc: openai.APIStatusError, settings: LLMSettings, detail: str) -> JobError:
    if isinstance(exc, openai.RateLimitError):
        wait = retry_after_hint(exc.response.headers)
        asked = f", retry after {wait:g} s" if wait is not None else ""
        return RateLimitedError(f"LLM rate limited (429{asked}): {detail}", retry_after_s=wait)
    if exc.status_code >= 500 or exc.status_code in _RETRYABLE_4XX:
        return TransientJobError(f"LLM server error: {detail}")
    hint = next((text for klass, text in _PERMANENT_HINTS.items() if isinstance(exc, klass)), None)
    if hint is not None:
        filled = hint.format(key=_KEY_SETTING, model=settings.model, base_url=settings.base_url)
        return LLMPermanentError(f"{filled} {detail}")
    return LLMPermanentError(f"the LLM API refused the request ({exc.status_code}): {detail}")


def _refused(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def map_api_error(exc: openai.APIError, settings: LLMSettings, secret: str | None) -> JobError:
    """The JobError that routes `exc` correctly. Raise it `from None` when `hides_cause(exc)`."""
    detail = _detail(exc, secret)
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return TransientJobError(f"LLM request timed out after {settings.request_timeout_s:g} s ({settings.base_url})")
    if isinstance(exc, openai.APITimeoutError):
        # The aiohttp transport reports a refused connection as a connect *timeout*; say what really happened.
        return TransientJobError(f"cannot reach the LLM at {settings.base_url}: connection refused")
    if isinstance(exc, openai.APIConnectionError):
        return TransientJobError(f"cannot reach the LLM at {settings.base_url}: {detail}")
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc, settings, detail)
    return TransientJobError(f"unexpected LLM API error: {detail}")


def hides_cause(exc: openai.APIError) -> bool:
    """Whether the SDK exception must not be chained: a dead letter keeps the stack trace, chained causes included,
    and an authentication failure's own text may quote the key."""
    return isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError)
