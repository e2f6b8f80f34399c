"""The code location loads, the way `dagster dev` and the daemon load it."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from cv_queue.definitions import defs
from cv_queue_tests.conftest import PROJECT_ROOT


def test_definitions_are_loadable():
    dg.Definitions.validate_loadable(defs)


def test_dagster_definitions_validate_with_workspace_yaml(tmp_path):
    dagster = str(Path(sys.executable).parent / "dagster")
    proc = subprocess.run([dagster, "definitions", "validate", "-w", "workspace.yaml"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "DAGSTER_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr
