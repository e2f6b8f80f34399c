"""Mapping exceptions to failure categories by type, never by message text.

The original implementation matched error *message prefixes* ("timeout", "rate limit"), so a
reworded error silently changed its route. Here a rule names an exception class; the most specific
class in the exception's MRO wins; an unknown exception is `transient` (the attempt cap still applies).
"""

import json
from collections.abc import Mapping

import pydantic

from cv_queue.dotted_paths import import_attribute
from cv_queue.errors import ErrorCategory, JobError, MalformedOutputError

# Exceptions for which a plain retry cannot help, after Spring Kafka's fatal list. A handler that fails to parse or
# validate something (most often an LLM's answer) is permanent after its repair calls (see MALFORMED_OUTPUT); only
# the worker's decoding of the *input* record is invalid_payload, and that raises InvalidPayloadError itself.
DEFAULT_RULES: dict[type[BaseException], ErrorCategory] = {
    pydantic.ValidationError: ErrorCategory.PERMANENT,
    json.JSONDecodeError: ErrorCategory.PERMANENT,
    UnicodeDecodeError: ErrorCategory.PERMANENT,
    TypeError: ErrorCategory.PERMANENT,
    AttributeError: ErrorCategory.PERMANENT,
    KeyError: ErrorCategory.PERMANENT,
    NotImplementedError: ErrorCategory.PERMANENT,
    FileNotFoundError: ErrorCategory.PERMANENT,
    PermissionError: ErrorCategory.PERMANENT,
    TimeoutError: ErrorCategory.TRANSIENT,
    ConnectionError: ErrorCategory.TRANSIENT,
}


#: Handler failures that mean "the output was malformed": the same delivery calls the handler again, up to
#: `retry.output_repairs` times, before the job is dead-lettered as permanent.
MALFORMED_OUTPUT: tuple[type[BaseException], ...] = (
    pydantic.ValidationError, json.JSONDecodeError, UnicodeDecodeError, MalformedOutputError,
)


def import_exception(path: str) -> type[BaseException]:
    """'package.module.ClassName' or 'package.module:ClassName' -> the class."""
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise ValueError(f"exception path {path!r} must be module.ClassName")
    try:
        obj = import_attribute(module_name, attr)  # an old path of a module that moved works, deprecated
    except AttributeError:
        obj = None
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise ValueError(f"{path!r} is not an exception class")
    return obj


class ErrorClassifier:
    """Decides the category of a failure from its exception type (and its explicit __cause__ chain)."""

    def __init__(self, rules: Mapping[str, ErrorCategory] | None = None) -> None:
        self._rules: dict[type[BaseException], ErrorCategory] = dict(DEFAULT_RULES)
        for path, category in (rules or {}).items():
            self._rules[import_exception(path)] = ErrorCategory(category)

    @staticmethod
    def is_malformed_output(exc: BaseException) -> bool:
        return isinstance(exc, MALFORMED_OUTPUT)

    def classify(self, exc: BaseException) -> ErrorCategory:
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if isinstance(current, JobError):
                return current.category
            for klass in type(current).__mro__:
                if klass in self._rules:
                    return self._rules[klass]
            # An explicit `raise X from cause` says what really failed; implicit context does not.
            current = current.__cause__
        return ErrorCategory.TRANSIENT
