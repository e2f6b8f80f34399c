"""What a stalled worker was doing: its Python stacks (py-spy) and the end of its log, for a failure message."""

import shutil
import subprocess
import sys
from pathlib import Path

LOG_LINES = 30


def stalled_worker_report(pid: int, log: Path) -> str:
    """py-spy's dump of every thread of `pid` and the last lines of its log (both best effort: the report must not
    hide the failure it explains)."""
    parts = [f"--- worker pid {pid}, log {log}"]
    beside_python = Path(sys.executable).parent / "py-spy"  # the venv's, when its bin is not on PATH
    spy = str(beside_python) if beside_python.exists() else shutil.which("py-spy")
    if spy is None:
        parts.append("(py-spy not installed: no stacks)")
    else:
        try:
            dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
            parts.append(dump.stdout or dump.stderr)
        except subprocess.TimeoutExpired:
            parts.append("(py-spy dump timed out)")
    try:
        parts.extend(log.read_text(errors="replace").splitlines()[-LOG_LINES:])
    except OSError as exc:
        parts.append(f"(log unreadable: {exc})")
    return "\n".join(parts)
