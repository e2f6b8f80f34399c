"""The handler contract: a callable from (job, context) to scores, loaded by dotted path."""

from dataclasses import dataclass
from typing import Any, Protocol

from cv_queue.dotted_paths import import_attribute
from cv_queue.messages import Evaluation, EvaluationJob, EvaluationScores
from cv_queue.settings import LLMSettings


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler may want to know about the delivery it is serving."""

    attempt: int  # 1 on the job's first delivery, +1 per retry-topic hop
    handler_call: int  # 1-based count of calls for this job, across deliveries and in-process retries
    replays: int  # times the job came back from the DLQ
    worker: str
    partition: int
    offset: int


class JobHandler(Protocol):
    """Evaluates one job. Raise a cv_queue.errors.JobError subclass to choose how a failure is routed;
    any other exception is classified by type (see cv_queue.kafka.worker.classify).

    Returns the scores, or an Evaluation (scores plus the model usage behind them). A handler may also be
    `async def` (or a class with an async `__call__`): the worker then runs it on an asyncio event loop. A handler
    that never blocks may set `inline = True`: the worker then runs it on its poll thread, with no hand-off per job
    (and no job timeout, which is why only a handler that cannot hang may ask for it). An async handler that runs
    blocking calls on threads of its own may report, as an int property `stuck_threads`, how many are still in calls
    whose jobs timed out: the worker counts them against `max_abandoned_handlers`.
    """

    def __call__(self, job: EvaluationJob, ctx: JobContext) -> EvaluationScores | Evaluation: ...


class HandlerLoadError(ValueError):
    """The configured handler path does not name a usable handler."""


def load_handler(path: str, options: dict[str, Any] | None = None, llm: LLMSettings | None = None) -> JobHandler:
    """'package.module:attr' (or 'package.module.attr'). A class is instantiated with `options`.

    A class that declares `uses_llm_settings = True` also gets `settings=llm` (the queue's LLM settings, which in
    Dagster carry the API key from an EnvVar), unless the options already name its settings.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise HandlerLoadError(f"handler path {path!r} must look like 'package.module:name'")
    try:
        target = import_attribute(module_name, attr)  # an old path of a module that moved works, deprecated
    except ImportError as exc:
        raise HandlerLoadError(f"cannot import handler module {module_name!r}: {exc}") from exc
    except AttributeError:
        target = None
    if target is None:
        raise HandlerLoadError(f"module {module_name!r} has no attribute {attr!r}")
    if isinstance(target, type):
        kwargs = dict(options or {})
        if llm is not None and getattr(target, "uses_llm_settings", False) and "settings" not in kwargs:
            kwargs["settings"] = llm
        try:
            return target(**kwargs)
        except TypeError as exc:
            raise HandlerLoadError(f"cannot construct {path} with options {options}: {exc}") from exc
    if options:
        raise HandlerLoadError(f"{path} is not a class, so handler_options {sorted(options)} cannot apply")
    if not callable(target):
        raise HandlerLoadError(f"{path} is not callable")
    return target
