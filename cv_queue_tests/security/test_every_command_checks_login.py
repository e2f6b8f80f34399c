"""One login check for every command: `cv-queue` checks the login where it builds its broker connection
(cv_queue/cli/context.py), so every command that talks to the broker ends with exit 6 and a message that names
authentication and KAFKA_SASL_PASSWORD within seconds on a wrong password, instead of librdkafka's
"Broker transport failure" after its own timeouts. Commands that never talk to a broker are not made to check.

The parser is walked, so a command added later must be put in one list or the other here."""

import argparse
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cv_queue.cli import context
from cv_queue.cli.main import build_parser
from cv_queue.kafka.admin.acls import WORKER
from cv_queue.kafka.client.auth import EXIT_AUTH, KafkaAuthError
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.security.conftest import SecureCluster
from cv_queue_tests.support import unique

# Every command that talks to the broker, with arguments that get it as far as its connection.
BROKER_COMMANDS: dict[str, list[str]] = {
    "topics provision": ["topics", "provision"],
    "topics describe": ["topics", "describe"],
    "acls apply": ["acls", "apply"],
    "acls describe": ["acls", "describe"],
    "enqueue": ["enqueue", "--count", "3"],
    "worker": ["worker", "--partitions", "0,1"],
    "status": ["status"],
    "dlq peek": ["dlq", "peek"],
    "dlq replay": ["dlq", "replay"],
    "fleet relayout": ["fleet", "relayout", "--partitions", "16"],
    "fleet layout": ["fleet", "layout"],
    # With KAFKA_BOOTSTRAP_SERVERS set, bench measures on that broker instead of starting its own.
    "bench": ["bench", "--scenario", "cv-queue", "--jobs", "10"],
}
# Commands that never talk to a broker the environment names: the local broker's own management (it is not a
# client), the settings reference, `dev`, which starts its own broker unless told otherwise and then leaves the
# talking to `cv-queue enqueue` and Dagster, which check for themselves, and the local LLM server.
NO_BROKER_COMMANDS = {"broker fetch", "broker start", "broker stop", "broker status", "config", "dev", "llm-server"}
# Variants of broker commands that answer from the settings alone, so a wrong password must not stop them.
OFFLINE_VARIANTS: dict[str, list[str]] = {
    "config": ["config"],
    "acls describe --markdown": ["acls", "describe", "--markdown"],
    "acls apply --dry-run": ["acls", "apply", "--dry-run"],
}
LIMIT_S = 30.0  # as test_auth_errors.py: "within seconds", with room for a loaded box
PARALLEL = 4  # the box has 2 cores; each command mostly waits on the broker, and each is timed from its own start


def _command_paths(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every leaf command of the parser, e.g. 'topics describe'."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return {prefix.strip()}
    return {path for action in subparsers for name, sub in action.choices.items()
            for path in _command_paths(sub, f"{prefix} {name}")}


def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Exit code, stdout and stderr, and seconds of one command; one that outlives the limit is killed with its
    process group (bench and dev start children) and reported as -9."""
    started = time.monotonic()
    proc = subprocess.Popen([CV_QUEUE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=LIMIT_S + 15)
    except subprocess.TimeoutExpired:  # librdkafka retrying for ever, as before the check: a failure below
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    return proc.returncode, stdout + stderr, time.monotonic() - started


@pytest.fixture(scope="module")
def wrong_password() -> str:
    return "not-the-password-" + unique()


@pytest.fixture(scope="module")
def wrong_password_results(secure_cluster: SecureCluster, wrong_password: str) -> dict[str, tuple[int, str, float]]:
    """Every broker command run once with a wrong password, a few at a time (one test per command reads its own)."""
    env = secure_cluster.env(WORKER, KAFKA_SASL_PASSWORD=wrong_password, CVQ_NAMESPACE=unique("c"))
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(_run, args, env) for name, args in BROKER_COMMANDS.items()}
        return {name: future.result() for name, future in futures.items()}


def test_every_command_is_either_checked_or_known_to_need_no_broker():
    commands = _command_paths(build_parser())
    assert commands == set(BROKER_COMMANDS) | NO_BROKER_COMMANDS, (
        f"unclassified: {sorted(commands - set(BROKER_COMMANDS) - NO_BROKER_COMMANDS)}; "
        f"gone: {sorted((set(BROKER_COMMANDS) | NO_BROKER_COMMANDS) - commands)}")


@pytest.mark.parametrize("name", list(BROKER_COMMANDS))
def test_a_wrong_password_ends_the_command_with_code_6_naming_authentication(name, wrong_password_results,
                                                                             wrong_password):
    returncode, output, seconds = wrong_password_results[name]
    assert returncode == EXIT_AUTH, f"`cv-queue {name}` exited {returncode}, not {EXIT_AUTH}:\n{output[-3000:]}"
    assert seconds < LIMIT_S, f"`cv-queue {name}` took {seconds:.1f}s"
    for fragment in ("authentication", "wrong password or an unknown user", "KAFKA_SASL_USERNAME",
                     "KAFKA_SASL_PASSWORD"):
        assert fragment in output, f"`cv-queue {name}` did not say {fragment!r}:\n{output[-3000:]}"
    assert "Broker transport failure" not in output
    assert wrong_password not in output, f"`cv-queue {name}` printed the password"


@pytest.mark.parametrize("name", list(OFFLINE_VARIANTS))
def test_commands_without_a_broker_are_not_made_to_check(name, secure_cluster, wrong_password):
    env = secure_cluster.env(WORKER, KAFKA_SASL_PASSWORD=wrong_password, CVQ_NAMESPACE=unique("c"))
    returncode, output, _ = _run(OFFLINE_VARIANTS[name], env)
    assert returncode == 0, f"`cv-queue {name}` exited {returncode}:\n{output[-3000:]}"


def test_the_login_is_checked_once_per_process_and_a_refusal_never_cached(secure_cluster, monkeypatch):
    """In process, against the secured broker: two connections with the right password cost one check; a wrong
    password raises each time it is asked (nothing remembers a failure), and a right one after it is checked anew."""
    calls: list[str] = []
    real_check = context.check_access

    def counted(conn, *args, **kwargs):  # the real check, counted: no broker is mocked
        calls.append(conn.sasl_username)
        return real_check(conn, *args, **kwargs)

    monkeypatch.setattr(context, "check_access", counted)
    monkeypatch.setattr(context, "_checked", set())
    for key, value in secure_cluster.env(WORKER).items():
        if key.startswith("KAFKA_"):
            monkeypatch.setenv(key, value)
    args = argparse.Namespace(bootstrap_servers=None)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "wrong-" + unique())
    for _ in range(2):
        with pytest.raises(KafkaAuthError, match="KAFKA_SASL_PASSWORD"):
            context.connection(args)
    assert len(calls) == 2
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", secure_cluster.passwords[WORKER])
    first = context.connection(args)
    second = context.connection(args)
    assert first == second and first.sasl_username == WORKER
    assert len(calls) == 3
