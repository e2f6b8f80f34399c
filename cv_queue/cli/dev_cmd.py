"""`cv-queue dev` (what `make run` runs): a local broker, the Dagster UI and daemon, topics, workers, jobs.

Everything it starts it stops on Ctrl-C: `dagster dev` first (which terminates the worker runs), then the
broker, if it started one. With KAFKA_BOOTSTRAP_SERVERS set it uses that broker and starts none.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cv_queue.broker.cluster import DEFAULT_PORT, start_cluster, stop_cluster

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Demo defaults, used only where the environment does not say otherwise: a simulated LLM that takes
# ~300 ms and honours the failure directives of the sample jobs, and a short DLQ cooldown so replays
# are visible within a minute.
DEMO_ENV = {
    "CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
    "CVQ_WORKER__HANDLER_OPTIONS": '{"latency_ms": 300, "latency_p99_ms": 1200}',
    "CVQ_REPLAY__COOLDOWN_S": "20",
    "CVQ_REPLAY__SENSOR_INTERVAL_S": "15",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("dev", help="run the whole queue locally: broker, Dagster UI, topics, workers, jobs")
    dev.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    dev.add_argument("--broker-port", type=int, default=DEFAULT_PORT, help="local broker port (default 9092)")
    dev.add_argument("--sample-jobs", type=int, default=200, help="sample jobs to enqueue (0 = none)")
    dev.add_argument("--fresh", action="store_true", help="wipe the local broker data and DAGSTER_HOME first")
    dev.set_defaults(func=cmd_dev)


def _dagster_home(fresh: bool) -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home")
    if fresh and home == PROJECT_ROOT / ".dagster_home":
        shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    # The project's dagster.yaml is the local instance config; DAGSTER_HOME holds a copy of it.
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with code {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the Dagster UI did not answer at {url} within {timeout_s:.0f}s")


def _run(cmd: list[str], env: dict[str, str]) -> None:
    print(f"$ {' '.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, check=True)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill`, `timeout` and CI stop us like Ctrl-C does: everything is cleaned up


def cmd_dev(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    env = dict(os.environ)
    for key, value in DEMO_ENV.items():
        env.setdefault(key, value)
    state_file = PROJECT_ROOT / ".cvq" / "broker-state.json"
    started_broker = False
    if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        data_dir = PROJECT_ROOT / ".cvq" / "kafka-data"
        if args.fresh:
            stop_cluster(state_file, progress=False)
            shutil.rmtree(data_dir, ignore_errors=True)
        state = start_cluster(1, args.broker_port, data_dir=data_dir, state_file=state_file)
        started_broker = True
        env["KAFKA_BOOTSTRAP_SERVERS"] = state.bootstrap
        print(f"local Kafka ready at {state.bootstrap}", file=sys.stderr)
    env["DAGSTER_HOME"] = str(_dagster_home(args.fresh))
    bin_dir = Path(sys.executable).parent
    dagster = subprocess.Popen(
        [str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)],
        env=env, cwd=PROJECT_ROOT,
    )
    try:
        _wait_http(f"http://127.0.0.1:{args.port}/server_info", 180, dagster)
        _run([str(bin_dir / "dagster"), "asset", "materialize", "--select", "group:kafka_topics",
              "-m", "cv_queue.definitions"], env)
        if args.sample_jobs:
            _run([str(bin_dir / "cv-queue"), "enqueue", "--count", str(args.sample_jobs), "--transient", "0.1",
                  "--permanent", "0.05", "--until-replay", "0.05", "--invalid", "6"], env)
        print(
            f"\ncv-queue is running.\n  Dagster UI:  http://127.0.0.1:{args.port}\n"
            f"  broker:      {env['KAFKA_BOOTSTRAP_SERVERS']}\n"
            "  try:        .venv/bin/cv-queue status | .venv/bin/cv-queue dlq peek\n"
            "Press Ctrl-C to stop everything.\n",
            file=sys.stderr,
        )
        dagster.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if dagster.poll() is None:
            dagster.send_signal(signal.SIGINT)
            try:
                dagster.wait(60)
            except subprocess.TimeoutExpired:
                dagster.kill()
        if started_broker:
            stop_cluster(state_file)
    return 0
