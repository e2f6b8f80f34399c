"""Which pool runs a worker's jobs, chosen by the handler: inline on the poll thread, an event loop, or threads."""

from collections.abc import Callable

from cv_queue.evaluation.handler import JobHandler
from cv_queue.kafka.worker.async_pool import AsyncHandlerPool
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.kafka.worker.execution import AsyncJobRunner, JobRunner, is_async_handler
from cv_queue.kafka.worker.inline_pool import InlinePool
from cv_queue.kafka.worker.pool import HandlerPool
from cv_queue.settings import QueueSettings, Slot

AnyPool = HandlerPool | AsyncHandlerPool | InlinePool


def _stuck_threads(handler: JobHandler) -> Callable[[], int] | None:
    """A handler's own threads left in calls of timed-out jobs (its `stuck_threads`, an int property, e.g.
    LLMEvaluator's cv_ref reads), read live: they are abandoned handlers too."""
    if not hasattr(handler, "stuck_threads"):
        return None
    return lambda: int(handler.stuck_threads)  # type: ignore[attr-defined]


def handler_pool(handler: JobHandler, settings: QueueSettings, classifier: ErrorClassifier, worker_id: str,
                 slot: Slot) -> AnyPool:
    """A handler that says `inline = True` runs on the poll thread (no hand-off: the no-op's case); an async one on
    one event loop with up to `max_in_flight` jobs; any other on `max_in_flight` threads."""
    worker = settings.worker
    if getattr(handler, "inline", False) is True:
        return InlinePool(JobRunner(handler, settings.retry, classifier, worker_id))
    if is_async_handler(handler):
        admit = getattr(handler, "admit", None)
        return AsyncHandlerPool(
            AsyncJobRunner(handler, settings.retry, classifier, worker_id),
            size=worker.max_in_flight, job_timeout_s=worker.job_timeout_s,
            thread_prefix=f"cvq-handler-{slot.name}", on_close=getattr(handler, "aclose", None),
            max_abandoned=worker.max_abandoned_handlers, cancel_grace_s=worker.cancel_grace_s,
            stuck_threads=_stuck_threads(handler),
            admit=(lambda task: float(admit(task.job))) if callable(admit) else None)
    return HandlerPool(
        lambda: JobRunner(handler, settings.retry, classifier, worker_id),
        size=worker.max_in_flight, job_timeout_s=worker.job_timeout_s,
        max_abandoned=worker.max_abandoned_handlers, thread_prefix=f"cvq-handler-{slot.name}",
        hold=getattr(handler, "hold_s", None))
