"""`cv-queue llm-server`: the local LLM server from the product's command, with the flags of `python -m
cv_queue.llm_server` (one argparse definition, cv_queue/llm_server/command.py). No broker needed."""

import argparse
import json
import signal
import subprocess
import sys
import urllib.request

from cv_queue.llm_server import server_process
from cv_queue.llm_server.command import add_arguments
from cv_queue_tests.conftest import CV_QUEUE


def _flags() -> list[str]:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return [option for action in parser._actions for option in action.option_strings]


def test_help_lists_the_flags_of_the_module_command() -> None:
    flags = _flags()
    assert {"--port", "--latency-ms", "--rpm", "--tpm", "--require-key-from-env"} <= set(flags)
    for command in ([CV_QUEUE, "llm-server", "--help"], [sys.executable, "-m", "cv_queue.llm_server", "--help"]):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        missing = [flag for flag in flags if flag not in proc.stdout]
        assert missing == [], f"{command}: {missing}"
    top = subprocess.run([CV_QUEUE, "--help"], capture_output=True, text=True, timeout=60)
    assert "llm-server" in top.stdout


def test_a_flag_out_of_range_is_a_usage_error() -> None:
    proc = subprocess.run([CV_QUEUE, "llm-server", "--rpm", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--rpm must be a positive number" in proc.stderr


def test_it_serves_models_on_a_free_port_and_stops_on_sigterm() -> None:
    with server_process("--latency-ms", "1", command=(CV_QUEUE, "llm-server")) as server:
        assert not server.base_url.endswith(":0/v1")  # --port 0: the port it chose is announced
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=10) as response:
            assert json.load(response)["object"] == "list"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
