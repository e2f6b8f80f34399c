"""Running one delivery of a job: the handler call, in-process retries and output repairs, never an escape.

`JobRunner.__call__` turns a Task into a Completion whatever the handler does: returns, raises an Exception, or
raises a BaseException (asyncio.CancelledError, SystemExit or KeyboardInterrupt from inside a library). A
handler thread therefore never dies with its job, and every job gets exactly one outcome.
"""

import asyncio
import inspect
import logging
import queue
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from cv_queue.errors import ErrorCategory
from cv_queue.evaluation.handler import JobContext, JobHandler
from cv_queue.kafka.metrics import count_llm_usage
from cv_queue.kafka.wire.delivery import Delivery
from cv_queue.kafka.wire.records import Failure
from cv_queue.kafka.worker.backoff import AsyncInProcessRetry, InProcessRetry
from cv_queue.kafka.worker.classify import ErrorClassifier
from cv_queue.messages import Evaluation, EvaluationJob, EvaluationResult, EvaluationScores
from cv_queue.settings import RetrySettings

log = logging.getLogger("cv_queue.worker")

JOB_TIMEOUT_CLASS = "cv_queue.JobTimeout"


@dataclass(slots=True)
class Task:
    """A decoded job on its way through the scheduler and a handler."""

    delivery: Delivery
    job: EvaluationJob
    lane: bytes | tuple[str, int]  # what must not run concurrently: the key, or the partition
    calls: int = 0  # handler calls made in this delivery so far (read when the job times out)
    # Set by the async pool when it cancels this delivery (its deadline passed, or the worker is closing): the
    # runner then makes no further handler call and passes a CancelledError on. The task's `cancelling()` cannot
    # say this: a library that cancels its own task without `uncancel()` raises it too.
    cancelled: bool = False


@dataclass(slots=True)
class Completion:
    task: Task
    calls: int
    result: bytes | None
    failure: Failure | None
    seconds: float = 0.0  # time this delivery spent in the handler (for the duration histogram)


class CompletionQueue:
    """Completions handed from the handlers' side to the poll loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Completion] = queue.SimpleQueue()

    def put(self, completion: Completion) -> None:
        self._queue.put(completion)

    def drain(self) -> list[Completion]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout_s: float) -> Completion | None:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None


def timeout_completion(task: Task, timeout_s: float) -> Completion:
    failure = Failure(ErrorCategory.TRANSIENT, JOB_TIMEOUT_CLASS,
                      f"the handler did not return within job_timeout_s={timeout_s:g}s; its late answer is dropped", "")
    return Completion(task, max(task.calls, 1), None, failure, timeout_s)


def failure_of(exc: BaseException, classifier: ErrorClassifier) -> Failure:
    """The Failure for an exception, even one whose classification or formatting itself fails."""
    try:
        return Failure.from_exception(exc, classifier.classify(exc))
    except Exception:
        return Failure(ErrorCategory.TRANSIENT, type(exc).__qualname__, "unprintable exception", "")


def is_async_handler(handler: object) -> bool:
    """An `async def` handler, or an object whose `__call__` is one."""
    call = type(handler).__call__ if not inspect.isroutine(handler) else handler
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


def _malformed_final(failure: Failure, repairs: int) -> Failure:
    return Failure(ErrorCategory.PERMANENT, failure.error_class,
                   f"handler output still malformed after {repairs} repair call(s): {failure.message}",
                   failure.stacktrace)


def _context(task: Task, worker: str) -> JobContext:
    delivery = task.delivery
    return JobContext(attempt=delivery.attempts + 1, handler_call=delivery.handler_calls + task.calls,
                      replays=delivery.replays, worker=worker, partition=delivery.source.partition,
                      offset=delivery.source.offset)


def result_bytes(task: Task, output: EvaluationScores | Evaluation, ctx: JobContext, worker: str) -> bytes:
    """The encoded result of a handler's output (bare scores, or scores with their model usage, which is counted
    here, where it is still an object)."""
    scores, usage = (output.scores, output.usage) if isinstance(output, Evaluation) else (output, None)
    if usage is not None:
        count_llm_usage(usage)
    job = task.job
    return EvaluationResult(
        job_id=job.job_id, request_id=job.request_id, scores=scores, evaluated_at=datetime.now(UTC),
        job_created_at=job.created_at, attempts=ctx.attempt, handler_calls=ctx.handler_call,
        replays=ctx.replays, worker=worker, usage=usage,
    ).to_bytes()


class _Runner:
    """What both runners share: the handler, and what a failure of it becomes."""

    def __init__(self, handler: JobHandler, retry: RetrySettings, classifier: ErrorClassifier, worker: str) -> None:
        self.handler = handler
        self.repairs = retry.output_repairs
        self.classifier = classifier
        self.worker = worker

    def _failed(self, task: Task, exc: BaseException, repairs_left: int) -> Completion | None:
        """The job's failed completion, or None when a malformed output is worth another (repair) call."""
        malformed = self.classifier.is_malformed_output(exc)
        if malformed and repairs_left > 0:
            return None
        failure = failure_of(exc, self.classifier)
        if malformed:
            failure = _malformed_final(failure, self.repairs)
        return Completion(task, task.calls, None, failure)


class JobRunner(_Runner):
    """Calls the handler for one delivery: tenacity for blips, repair calls for malformed output.

    One per handler thread: tenacity's Retrying object is not thread-safe.
    """

    def __init__(self, handler: JobHandler, retry: RetrySettings, classifier: ErrorClassifier, worker: str) -> None:
        super().__init__(handler, retry, classifier, worker)
        self._retrying = InProcessRetry(retry, classifier)

    def __call__(self, task: Task) -> Completion:
        started = time.monotonic()
        completion = self._run(task)
        completion.seconds = time.monotonic() - started
        return completion

    def _run(self, task: Task) -> Completion:
        repairs_left = self.repairs
        while True:
            try:
                result = self._retrying(lambda: self._invoke(task))
                return Completion(task, task.calls, result, None)
            except BaseException as exc:  # every handler failure, BaseExceptions included, is the job's
                if (failed := self._failed(task, exc, repairs_left)) is not None:
                    return failed
                repairs_left -= 1

    def _invoke(self, task: Task) -> bytes:
        task.calls += 1
        ctx = _context(task, self.worker)
        return result_bytes(task, self.handler(task.job, ctx), ctx, self.worker)


class AsyncJobRunner(_Runner):
    """JobRunner for an async handler, on the worker's event loop.

    The pool's cancel (the job's timeout, or the worker closing; it sets `task.cancelled` first) is passed on, never
    taken for the handler's failure, and no further call is made once it happened, even when the handler swallowed
    it. A CancelledError that the handler raises by itself (a library cancelling its own work, with or without
    `uncancel()`) is a failure of the job, as in the thread pool.
    """

    def __init__(self, handler: JobHandler, retry: RetrySettings, classifier: ErrorClassifier, worker: str) -> None:
        super().__init__(handler, retry, classifier, worker)
        self._retrying = AsyncInProcessRetry(retry, classifier)

    async def __call__(self, task: Task) -> Completion:
        started = time.monotonic()
        completion = await self._run(task)
        completion.seconds = time.monotonic() - started
        return completion

    async def _run(self, task: Task) -> Completion:
        repairs_left = self.repairs
        while True:
            try:
                result = await self._retrying(lambda: self._invoke(task))
                return Completion(task, task.calls, result, None)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and task.cancelled:
                    raise  # the pool cancelled the job (timed out, or the worker closing): the pool decides
                if (failed := self._failed(task, exc, repairs_left)) is not None:
                    return failed
                repairs_left -= 1

    async def _invoke(self, task: Task) -> bytes:
        if task.cancelled:
            # The pool cancelled the job, and the handler swallowed the cancel and failed some other way: no
            # in-process retry or repair call after it (it would be paid for and then dropped).
            raise asyncio.CancelledError("the job was cancelled by its pool")
        task.calls += 1
        ctx = _context(task, self.worker)
        output = await self.handler(task.job, ctx)  # type: ignore[misc]
        return result_bytes(task, output, ctx, self.worker)
