"""Async handlers that ignore their job's cancellation, loaded by dotted path into real `cv-queue worker` processes.

`StubbornHandler` scores a job like the simulated LLM after `latency_ms`, unless the job's label `stubborn` names
one of the ways real handlers swallow a cancel:
    swallow   `except BaseException:` around an await, then another long await (a bare `except:` that retries)
    shield    awaits `asyncio.shield(work)` and, when cancelled, waits for the work to finish ("let the write end")
    finally   a `finally` that awaits a long clean-up
    late      swallows the cancel, then returns a result `late_s` later: a late answer that must be dropped
    read      reads its cv_ref, a FIFO nobody writes (a read hung on a dead mount), on the handler's FileReads
and one that is no defect of the handler's but must not be taken for the job's cancel:
    selfcancel  a library that times out its own call by cancelling the job's task (never uncancel()ing it), then
                raises a transient ConnectionError: the job fails as that, at once, and is not held
"""

import asyncio
import contextlib
import os
from pathlib import Path

from cv_queue.evaluation.files import FileReads
from cv_queue.evaluation.handler import JobContext
from cv_queue.evaluation.llm.prompt import read_cv_text
from cv_queue.evaluation.scorer import score
from cv_queue.messages import EvaluationJob, EvaluationScores


class StubbornHandler:
    def __init__(self, latency_ms: float = 20.0, hold_s: float = 3600.0, late_s: float = 3.0,
                 file_read_threads: int = 2) -> None:
        self.latency_s = latency_ms / 1000
        self.hold_s = hold_s
        self.late_s = late_s
        self._reads = FileReads(file_read_threads)

    @property
    def stuck_threads(self) -> int:
        return self._reads.stuck

    async def __call__(self, job: EvaluationJob, ctx: JobContext) -> EvaluationScores:
        mode = job.labels.get("stubborn", "")
        if mode == "swallow":
            try:
                await asyncio.sleep(self.hold_s)
            except BaseException:  # the defect under test: the job's cancel is swallowed
                await asyncio.sleep(self.hold_s)
        elif mode == "shield":
            work = asyncio.ensure_future(asyncio.sleep(self.hold_s))
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                await work
        elif mode == "finally":
            try:
                await asyncio.sleep(self.hold_s)
            finally:
                await asyncio.sleep(self.hold_s)
        elif mode == "late":
            try:
                await asyncio.sleep(self.hold_s)
            except asyncio.CancelledError:
                await asyncio.sleep(self.late_s)
        elif mode == "selfcancel":
            current = asyncio.current_task()
            assert current is not None
            current.cancel()
            try:
                await asyncio.sleep(self.hold_s)
            except asyncio.CancelledError:
                raise ConnectionError("upstream timed out") from None
        elif mode == "read":
            return score(job, await read_cv_text(job, self._reads))
        await asyncio.sleep(self.latency_s)
        return score(job, job.cv_text or "")


def hung_file(folder: Path, name: str) -> Path:
    """A FIFO: opening it for reading blocks until a writer comes, as a read on a dead mount blocks."""
    path = folder / name
    os.mkfifo(path)
    return path


def release(fifo: Path) -> None:
    """Unblock every reader stuck in the FIFO's open (they then read an empty file)."""
    with contextlib.suppress(OSError):  # no reader (ENXIO), or gone
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
