"""cv_ref reads on their own bounded threads: a read hung on a dead mount (here a FIFO nobody writes) ends with its
caller's timeout, holds one of a few threads of its own, never the event loop's default executor, and is counted."""

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from cv_queue.errors import TransientJobError
from cv_queue.evaluation.files import FileReads
from cv_queue.evaluation.handler import JobContext
from cv_queue.evaluation.llm import LLMEvaluator
from cv_queue.evaluation.llm.prompt import read_cv_text
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.messages import EvaluationJob
from cv_queue.settings import LLMSettings
from cv_queue_tests.kafka.stubborn import hung_file, release

CTX = JobContext(attempt=1, handler_call=1, replays=0, worker="w", partition=0, offset=0)


def _job_reading(path: Path, index: int = 0) -> EvaluationJob:
    job = next(iter(sample_jobs(1, seed=index, prefix=f"r{index}")))
    return job.model_copy(update={"cv_text": None, "cv_ref": f"file://{path}"})


def _wait_unstuck(reads: FileReads, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while reads.stuck and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reads.stuck == 0


def test_hung_reads_hold_their_own_threads_never_the_default_executor(tmp_path: Path) -> None:
    # More hung reads than the default executor has threads (min(32, cpus + 4)): with asyncio.to_thread they would
    # fill it, and the loop's DNS lookups and every other to_thread call would wait behind them.
    count = min(32, (os.cpu_count() or 1) + 4) + 2
    fifos = [hung_file(tmp_path, f"cv{i}.txt") for i in range(count)]
    reads = FileReads(2)

    async def scenario() -> None:
        outcomes = await asyncio.gather(*(asyncio.wait_for(read_cv_text(_job_reading(f, i), reads), 0.3)
                                          for i, f in enumerate(fifos)), return_exceptions=True)
        assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
        assert reads.threads == 2 and reads.stuck == 2, "two threads, each stuck in a read nobody waits for"
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 5) == 42, "the default executor is starved"
        assert await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo("localhost", 80), 5)

    try:
        asyncio.run(scenario())
        file_threads = [t for t in threading.enumerate() if t.name.startswith("cvq-file-read")]
        # Daemon threads: a hung read never keeps the process from exiting (exit 5 included).
        assert file_threads and all(t.daemon for t in file_threads)
    finally:
        for fifo in fifos:
            release(fifo)
    _wait_unstuck(reads)


def test_once_every_thread_is_stuck_reads_fail_at_once_as_transient(tmp_path: Path) -> None:
    fifo = hung_file(tmp_path, "cv.txt")
    reads = FileReads(1)

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(read_cv_text(_job_reading(fifo), reads), 0.2)
        started = time.monotonic()
        with pytest.raises(TransientJobError, match="stuck"):
            await read_cv_text(_job_reading(fifo, 1), reads)
        assert time.monotonic() - started < 0.1

    try:
        asyncio.run(scenario())
    finally:
        release(fifo)
    _wait_unstuck(reads)


def test_a_read_whose_caller_gave_up_before_it_started_never_runs(tmp_path: Path) -> None:
    fifo = hung_file(tmp_path, "cv.txt")
    reads = FileReads(1)
    ran: list[str] = []

    async def scenario() -> None:
        hung = asyncio.create_task(read_cv_text(_job_reading(fifo), reads))
        queued = asyncio.create_task(reads.call(ran.append, "queued"))
        await asyncio.sleep(0.2)
        queued.cancel()
        hung.cancel()
        await asyncio.gather(hung, queued, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        release(fifo)
    _wait_unstuck(reads)
    time.sleep(0.1)
    assert ran == [], "a read nobody waits for any more was run"
    assert asyncio.run(reads.call(lambda: "next")) == "next", "the thread serves on once its hung read returned"


def test_the_llm_evaluator_reads_cv_ref_on_its_bounded_threads_and_reports_them_stuck(tmp_path: Path) -> None:
    fifo = hung_file(tmp_path, "cv.txt")
    evaluator = LLMEvaluator(settings=LLMSettings(api_key=SecretStr("unused"), file_read_threads=1))

    async def scenario() -> None:
        with pytest.raises(TimeoutError):  # the job's timeout ends it: nothing was sent to the model
            await asyncio.wait_for(evaluator(_job_reading(fifo), CTX), 0.3)

    try:
        asyncio.run(scenario())
        assert evaluator.stuck_threads == 1
    finally:
        release(fifo)
    deadline = time.monotonic() + 5
    while evaluator.stuck_threads and time.monotonic() < deadline:
        time.sleep(0.02)
    assert evaluator.stuck_threads == 0
