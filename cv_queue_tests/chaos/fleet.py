"""Worker processes for the chaos tests: the real `cv-queue worker` command, one per slot, killed and restarted.

Every process a test starts goes through a WorkerFleet, whose `kill_all` (called from a finally block) SIGKILLs
whatever is still running, so a failing test leaves no worker behind.
"""

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cv_queue.settings import QueueSettings
from cv_queue_tests.kafka.procs import spawn_worker, started


@dataclass
class Spawned:
    slot: str
    proc: subprocess.Popen
    log: Path

    @property
    def started(self) -> bool:
        return started(self.log)

    def rss_bytes(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss


@dataclass
class WorkerFleet:
    """One current worker process per slot, plus every process it ever started (for cleanup and figures)."""

    settings: QueueSettings
    log_dir: Path
    handler_options: dict[str, float] = field(default_factory=lambda: {"latency_ms": 0})
    in_flight: int = 8
    env: dict[str, str] = field(default_factory=dict)
    current: dict[str, Spawned] = field(default_factory=dict)
    history: list[Spawned] = field(default_factory=list)

    def spawn(self, slot: str, **env: str) -> Spawned:
        log = self.log_dir / f"worker-{slot}-{len(self.history)}.log"
        extra = {"CVQ_WORKER__HANDLER_OPTIONS": json.dumps(self.handler_options), **self.env, **env}
        spawned = Spawned(slot, spawn_worker(self.settings, slot, log, in_flight=self.in_flight, extra_env=extra),
                          log)
        self.current[slot] = spawned
        self.history.append(spawned)
        return spawned

    def start(self, slots: list[str] | None = None) -> None:
        for slot in slots or [s.name for s in self.settings.slots()]:
            self.spawn(slot)

    def wait_started(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(w.started for w in self.current.values()):
            dead = [w for w in self.current.values() if w.proc.poll() is not None]
            if dead:
                raise AssertionError(f"worker {dead[0].slot} exited with {dead[0].proc.returncode} before starting:\n"
                                     + dead[0].log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"workers did not start within {timeout_s:.0f}s")
            time.sleep(0.2)

    def kill_and_restart(self, slot: str) -> Spawned:
        """SIGKILL the slot's worker (a crash, an OOM kill) and start its replacement at once."""
        victim = self.current[slot]
        os.kill(victim.proc.pid, signal.SIGKILL)
        code = victim.proc.wait(30)
        assert code == -signal.SIGKILL, f"worker {slot} ended with {code} instead of dying by SIGKILL"
        return self.spawn(slot)

    def alive(self) -> dict[str, bool]:
        return {slot: w.proc.poll() is None for slot, w in self.current.items()}

    def assert_alive(self) -> None:
        """Fail at once, with the log's tail, when a current worker exited by itself (a crash on some record)."""
        for w in self.current.values():
            if w.proc.poll() is not None:
                raise AssertionError(f"worker {w.slot} exited with {w.proc.returncode}:\n"
                                     + w.log.read_text(errors="replace")[-3000:])

    def stop(self, timeout_s: float = 60.0) -> dict[str, int | None]:
        """SIGTERM every current worker; their exit codes (None: still running after timeout_s)."""
        for w in self.current.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout_s
        for slot, w in self.current.items():
            try:
                codes[slot] = w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[slot] = None
        return codes

    def kill_all(self) -> None:
        for w in self.history:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(30)

    def logs(self, slot: str | None = None) -> str:
        return "\n".join(w.log.read_text(errors="replace") for w in self.history if slot in (None, w.slot))
