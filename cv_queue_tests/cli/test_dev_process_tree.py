"""The stop of `cv-queue dev` ends a process tree whose members ignore SIGINT and SIGTERM, one of which left
the process group, after their parent died: a hung or escaped child cannot hang or survive the stop."""

import os
import subprocess
import sys
import textwrap
import time

import psutil

from cv_queue.cli.process_tree import ProcessTree, stop_group
from cv_queue_tests.support import wait_for

# A root that dies on SIGINT, leaving two orphans that ignore SIGINT and SIGTERM: one in the root's
# process group, one in a session of its own (as a run process may be).
_STUBBORN = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    stubborn = "import os, signal, sys, time\\n" \\
        "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" \\
        "if sys.argv[1] == 'escape': os.setsid()\\n" \\
        "time.sleep(600)"
    for how in ("stay", "escape"):
        subprocess.Popen([sys.executable, "-c", stubborn, how])
    time.sleep(600)
""")


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_stop_group_kills_stubborn_and_escaped_descendants():
    root = subprocess.Popen([sys.executable, "-c", _STUBBORN], start_new_session=True)
    tree = ProcessTree(root.pid)
    seen: list[psutil.Process] = []
    try:
        def both_children_ready() -> bool:
            seen[:] = psutil.Process(root.pid).children(recursive=True)
            escaped = [p for p in seen if p.cmdline()[-1:] == ["escape"]]
            # setsid() runs after the handlers are set, so a session of its own means both are ready
            return len(seen) == 2 and len(escaped) == 1 and os.getsid(escaped[0].pid) == escaped[0].pid

        wait_for(both_children_ready, 30, "the two stubborn children")
        time.sleep(0.5)  # the child that stays has set its handlers too
        started = time.monotonic()
        stop_group(root, tree, interrupt_wait_s=2)
        elapsed = time.monotonic() - started
        assert root.poll() is not None
        assert not [p for p in seen if _running(p)], "a descendant survived the stop"
        assert elapsed < 60, f"the stop took {elapsed:.1f}s"  # the bound; here 2 s + 3 s + the kill
    finally:
        for proc in seen:
            if _running(proc):
                proc.kill()
        if root.poll() is None:
            root.kill()
            root.wait(10)
