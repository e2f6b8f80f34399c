"""The process tree of a command that `cv-queue dev` started, and its bounded stop.

Run processes outlive their parents and need not stay in their group, so the tree is collected while everything
runs, and the stop signals every process ever seen below the root, not only the group.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import psutil

TERM_WAIT_S = 3.0


class ProcessTree:
    """Every process seen below a root, remembered so that orphans (re-parented when their parent exits)
    are still found and stopped."""

    def __init__(self, root_pid: int) -> None:
        self._seen: dict[tuple[int, float], psutil.Process] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(root_pid)
            self._seen[(root.pid, root.create_time())] = root
        self._watcher = threading.Thread(target=self._watch, name="cvq-dev-process-tree", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._closed.wait(1.0):
            self.refresh()

    def refresh(self) -> None:
        with self._lock:
            for proc in list(self._seen.values()):
                with contextlib.suppress(psutil.Error):
                    for child in proc.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            self._seen.setdefault((child.pid, child.create_time()), child)

    def alive(self) -> list[psutil.Process]:
        self.refresh()
        live = []
        for proc in list(self._seen.values()):
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    live.append(proc)
        return live

    def signal_all(self, sig: int) -> None:
        for proc in self.alive():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)

    def close(self) -> None:
        self._closed.set()


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_all_gone(proc: subprocess.Popen, tree: ProcessTree, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        proc.poll()  # reaps our direct child, so it does not linger as a zombie
        if not tree.alive():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def stop_group(proc: subprocess.Popen, tree: ProcessTree, interrupt_wait_s: float) -> None:
    """SIGINT the process group (what a terminal's Ctrl-C does), then SIGTERM, then SIGKILL every process
    of the tree still alive; bounded throughout, so a hung child cannot hang the stop."""
    tree.refresh()
    signal_group(proc.pid, signal.SIGINT)  # start_new_session made its pid the group id
    if not wait_all_gone(proc, tree, interrupt_wait_s):
        signal_group(proc.pid, signal.SIGTERM)
        tree.signal_all(signal.SIGTERM)  # also those that left the group
        wait_all_gone(proc, tree, TERM_WAIT_S)
    left = tree.alive()
    if left:
        print(f"killing {len(left)} process(es) that outlived the stop: {[p.pid for p in left]}", file=sys.stderr)
        tree.signal_all(signal.SIGKILL)
        signal_group(proc.pid, signal.SIGKILL)
        wait_all_gone(proc, tree, 5.0)
    tree.close()


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(TERM_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(TERM_WAIT_S)
