"""LLMEvaluator on the thread handler path: each handler thread runs its calls on an event loop of its own.

The async LLMEvaluator is the one to deploy: a thousand calls in flight are a thousand awaits on one loop. This
wrapper exists for comparison (the `llm-1s-threads` benchmark) and for a deployment that must run LLM calls as
thread handlers; with `max_in_flight` threads it can only ever have that many calls in flight. Its threads share one
budget of the provider's quota (budget.py); a job waits for it in its thread. They share one spend gate too
(spend.py): while the window is spent no thread starts a job (`hold_s`); a job already started finishes, so this
handler may overspend the limit by what its `max_in_flight` jobs cost.
"""

import asyncio
import threading
from typing import Any

from cv_queue.evaluation.files import FileReads
from cv_queue.evaluation.handler import JobContext
from cv_queue.evaluation.llm.evaluator import LLMEvaluator
from cv_queue.messages import Evaluation, EvaluationJob


class ThreadedLLMEvaluator:
    """A synchronous handler: the same evaluation, blocking its thread for the whole call."""

    uses_llm_settings = True

    def __init__(self, **options: Any) -> None:
        self._options = options
        checked = LLMEvaluator(**options)  # configuration errors now, at load time, not on the first job
        # One set of cv_ref read threads for all handler threads; a read stuck in one is already counted as its
        # handler thread, abandoned at the job's timeout.
        self._reads = FileReads(checked.settings.file_read_threads)
        self._local = threading.local()
        self.settings = checked.settings
        self.budget = checked.budget  # one for every handler thread's evaluator
        self.spend = checked.spend  # likewise

    def set_fleet_size(self, live_workers: int) -> None:
        self.budget.set_fleet_size(live_workers)
        self.spend.set_fleet_size(live_workers)

    @property
    def spend_exhausted(self) -> bool:
        return self.spend.wait_s() > 0

    def hold_s(self) -> float:
        """How long no job may start: until the next window while this one is spent (asked by the thread pool)."""
        return self.spend.wait_s()

    def __call__(self, job: EvaluationJob, ctx: JobContext) -> Evaluation:
        local = self._local
        if not hasattr(local, "loop"):
            # One loop and one evaluator (so one HTTP connection pool) per handler thread, kept for its lifetime.
            local.loop = asyncio.new_event_loop()
            local.evaluator = LLMEvaluator(file_reads=self._reads, budget=self.budget, spend=self.spend,
                                           **self._options)
        return local.loop.run_until_complete(local.evaluator(job, ctx))
