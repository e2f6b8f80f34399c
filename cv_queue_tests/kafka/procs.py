"""Worker *processes* for the crash and fencing tests: the real `cv-queue worker` command."""

import json
import os
import signal
import subprocess
from pathlib import Path

from cv_queue.settings import QueueSettings
from cv_queue_tests.conftest import CV_QUEUE


def spawn_worker(settings: QueueSettings, slot: str, log: Path, latency_ms: float = 0, in_flight: int = 8,
                 extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "CVQ_NAMESPACE": settings.namespace,
        "CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
        "CVQ_WORKER__HANDLER_OPTIONS": json.dumps({"latency_ms": latency_ms}),
        "CVQ_WORKER__MAX_IN_FLIGHT": str(in_flight),
        "CVQ_WORKER__PROGRESS_INTERVAL_S": "1",
        **(extra_env or {}),
    }
    out = log.open("ab")
    try:
        return subprocess.Popen([CV_QUEUE, "worker", "--partitions", slot, *(extra_args or [])], env=env, stdout=out,
                                stderr=out)
    finally:
        out.close()


def started(log: Path) -> bool:
    return log.exists() and "started on" in log.read_text(errors="replace")


def stop_all(*procs: subprocess.Popen | None) -> None:
    """SIGTERM every process still running, then wait for each; one that outstays 60 s is SIGKILLed."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc is None:
            continue
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
