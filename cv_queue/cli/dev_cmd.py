"""`cv-queue dev` (what `make run` runs): a local broker, the Dagster UI and daemon, topics, workers, jobs.

With KAFKA_BOOTSTRAP_SERVERS set it uses that broker and starts none. Ctrl-C, SIGTERM (a supervisor,
`timeout`, `kill`), SIGHUP, or `dagster dev` dying all stop everything the same way, within a minute:

1. The worker fleet is stopped the way `stop_worker_fleet` does it (the stop flag in the Dagster instance), so
   worker runs commit and end SUCCESS. Whatever run is still active after a while is terminated (CANCELED).
2. `dagster dev`'s process group gets SIGINT, as from a terminal's Ctrl-C, then SIGTERM.
3. Every process seen under `dagster dev` that is still alive is SIGKILLed. The tree is collected while
   everything runs, because run processes outlive their parents and need not stay in the group.
4. The broker stops last.

`dagster dev` runs in a session of its own so a terminal's Ctrl-C reaches only this process, which then
orchestrates the stop; a dagster dev that got the Ctrl-C itself would interrupt the worker runs, and they
would end FAILURE although they had committed their work cleanly.
"""

import argparse
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cv_queue.broker.cluster import DEFAULT_PORT, start_cluster, stop_cluster
from cv_queue.cli.process_tree import ProcessTree, stop_group, stop_process
from cv_queue.cli.signals import ignore_stop_signals, raise_on_stop_signals
from cv_queue.settings import QueueSettings

if TYPE_CHECKING:
    import dagster as dg

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
STOPPED_BY = "cv-queue dev"
# The stop's phases are bounded so that the whole stop, broker included, stays under a minute.
FLEET_STOP_WAIT_S = 20.0  # worker runs check the flag every 3 s, then finish in-flight jobs and commit
CANCEL_WAIT_S = 8.0
DAGSTER_STOP_WAIT_S = 12.0
BROKER_STOP_TIMEOUT_S = 10.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("dev", help="run the whole queue locally: broker, Dagster UI, topics, workers, jobs")
    dev.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    dev.add_argument("--broker-port", type=int, default=DEFAULT_PORT, help="local broker port (default 9092)")
    dev.add_argument("--sample-jobs", type=int, default=200, help="sample jobs to enqueue (0 = none)")
    dev.add_argument("--state-dir", type=Path, default=PROJECT_ROOT / ".cvq",
                     help="the local broker's data and state file (default .cvq/ in the project)")
    dev.add_argument("--fresh", action="store_true", help="wipe the local broker data and DAGSTER_HOME first")
    dev.add_argument("--llm", choices=["simulated", "local", "provider"], default="simulated",
                     help="simulated: a sleeping stand-in (default); local: the real LLMEvaluator over HTTP against "
                     "the local OpenAI-protocol server; provider: the real LLMEvaluator against CVQ_LLM__BASE_URL "
                     "with CVQ_LLM__API_KEY (or OPENAI_API_KEY)")
    dev.set_defaults(func=cmd_dev)


def _run_step(cmd: list[str], env: dict[str, str]) -> None:
    """A start-up command in a session of its own, whose whole tree is stopped if we are interrupted."""
    print(f"$ {' '.join(cmd)}", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, start_new_session=True)
    tree = ProcessTree(proc.pid)
    try:
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            stop_group(proc, tree, interrupt_wait_s=10)
        tree.close()
    if returncode:
        raise subprocess.CalledProcessError(returncode, cmd)


def _dagster_home(fresh: bool) -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home")
    if fresh and home == PROJECT_ROOT / ".dagster_home":
        shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    # The project's dagster.yaml is the local instance config; DAGSTER_HOME holds a copy of it.
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def _open_instance(home: Path) -> "dg.DagsterInstance":
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)  # dagster.yaml reads its SQLite base_dir from it
    return dg.DagsterInstance.from_config(str(home))


def _set_fleet_stopped(instance: "dg.DagsterInstance", stopped: bool) -> None:
    from cv_queue.defs.fleet_state import set_fleet_stopped

    set_fleet_stopped(instance, stopped, STOPPED_BY)


def _active_runs(instance: "dg.DagsterInstance") -> list["dg.DagsterRun"]:
    import dagster as dg

    from cv_queue.defs.workers import ACTIVE

    return list(instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE)))


def _stop_runs(instance: "dg.DagsterInstance") -> None:
    """Stop the fleet like stop_worker_fleet, then terminate any run still active (it ends CANCELED)."""
    from cv_queue.defs.workers import active_worker_runs

    _set_fleet_stopped(instance, True)
    workers = active_worker_runs(instance)
    print(f"stopping the worker fleet ({len(workers)} run(s)) ...", file=sys.stderr)
    deadline = time.monotonic() + FLEET_STOP_WAIT_S
    while active_worker_runs(instance) and time.monotonic() < deadline:
        time.sleep(0.5)
    remaining = _active_runs(instance)
    for run in remaining:
        print(f"terminating run {run.run_id} ({run.job_name})", file=sys.stderr)
        with contextlib.suppress(Exception):  # its code server may be gone already; step 3 then ends it
            instance.run_coordinator.cancel_run(run.run_id)
    deadline = time.monotonic() + CANCEL_WAIT_S
    while remaining and time.monotonic() < deadline:
        time.sleep(0.5)
        remaining = _active_runs(instance)


def _close_orphaned_runs(instance: "dg.DagsterInstance") -> None:
    """Runs still active once their processes are gone would block their slot on the next start. We asked
    them to terminate, so, like run monitoring after a cancel timeout, record them CANCELED."""
    for run in _active_runs(instance):
        print(f"run {run.run_id} ({run.job_name}) did not end in time; recording it canceled", file=sys.stderr)
        instance.report_run_canceled(run, "cv-queue dev stopped, and the run's process had to be killed.")


def _own_dagster_home(home: Path, port: int) -> TextIO:
    """Make this the only `cv-queue dev` on `home`, and refuse to start over a `dagster dev` that is still serving:
    only then are the runs found active in its instance certainly stranded (see below). The lock is held by this
    process alone (children do not inherit it) and the kernel releases it however the process ends."""
    lock = (home / ".cv-queue-dev.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SystemExit(f"error: another cv-queue dev is running on {home} (DAGSTER_HOME); stop it first") from None
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        lock.close()
        raise SystemExit(f"error: port {port} is already served, perhaps by a `dagster dev` that an earlier cv-queue "
                         "dev left running when it was killed; stop it (or pick another --port) first")
    return lock


def _close_runs_left_by_a_crash(instance: "dg.DagsterInstance") -> None:
    """Runs that an earlier `cv-queue dev` left STARTING, STARTED or CANCELING: it was killed (SIGKILL, the OOM
    killer, a host crash) before its stop could end them. Their processes went with it, and nothing else would ever
    report them: under the default run launcher only the code server that launched a run does. Left as they are,
    each would hold its worker slot, or the one replay slot, for ever. This start owns the instance, so it fails
    them, saying why, and the fleet sensor and the DLQ sensor launch fresh ones. (Should a process of theirs have
    survived after all, the replacement's init_transactions fences it.)"""
    import dagster as dg

    from cv_queue.defs.liveness import fail_run

    stranded = instance.get_runs(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]))
    for run in stranded:
        reason = (f"cv-queue dev started again and found this run {run.status.value}: the cv-queue dev that ran it "
                  "ended without stopping it (killed, or the host crashed), and its process went with it. Marked "
                  "failed so that its slot gets a fresh run.")
        print(f"run {run.run_id} ({run.job_name}) was left {run.status.value} by an earlier cv-queue dev; "
              "marking it failed", file=sys.stderr)
        fail_run(instance, run, reason)


LLM_HANDLER = "cv_queue.evaluation.llm:LLMEvaluator"
LOCAL_LLM_KEY = "local-demo-key"  # the local server accepts any key; a real one never goes here


def _start_local_llm(env: dict[str, str]) -> subprocess.Popen:
    """The local OpenAI-protocol server (the tests' stand-in for a paid API), answering in ~0.8 s."""
    proc = subprocess.Popen([sys.executable, "-m", "cv_queue.llm_server", "--port", "0", "--latency-ms", "800",
                             "--latency-p99-ms", "3000"], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # "llm-server listening on http://127.0.0.1:N/v1"
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"the local LLM server did not start: {line!r}")
    # Keep reading what it prints, so a full pipe can never block it.
    threading.Thread(target=proc.stdout.read, name="cvq-llm-server-stdout", daemon=True).start()
    env["CVQ_LLM__BASE_URL"] = line[line.index("http://"):]
    env.setdefault("CVQ_LLM__API_KEY", LOCAL_LLM_KEY)
    return proc


def _use_llm(args: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen | None:
    if args.llm == "simulated":
        return None
    env["CVQ_WORKER__HANDLER"] = LLM_HANDLER
    env["CVQ_WORKER__HANDLER_OPTIONS"] = "{}"
    env.setdefault("CVQ_WORKER__MAX_IN_FLIGHT", "256")  # async: calls in flight are awaits, not threads
    if args.llm == "local":
        return _start_local_llm(env)
    if not (env.get("CVQ_LLM__API_KEY") or env.get("OPENAI_API_KEY")):
        raise SystemExit("--llm provider needs CVQ_LLM__API_KEY (or OPENAI_API_KEY), and CVQ_LLM__BASE_URL and "
                         "CVQ_LLM__MODEL unless the OpenAI defaults are what you want")
    return None


def _metrics_urls() -> str:
    metrics = QueueSettings().metrics
    if not metrics.enabled:
        return "off (CVQ_METRICS__ENABLED=false)"
    last = metrics.worker_port_base + len(QueueSettings().slots()) - 1
    return (f"http://{metrics.host}:{metrics.worker_port_base}..{last}/metrics (a worker run per slot), "
            f"{metrics.replay_port} (replay runs)")


def _shutdown(dagster: subprocess.Popen | None, tree: ProcessTree | None, instance: "dg.DagsterInstance | None",
              broker_state_file: Path | None, llm_server: subprocess.Popen | None = None) -> None:
    started = time.monotonic()
    ignore_stop_signals()  # a second Ctrl-C must not cut the stop short; it is bounded
    print("\nstopping cv-queue dev ...", file=sys.stderr)
    try:
        if dagster is not None:
            tree = tree or ProcessTree(dagster.pid)  # interrupted right after the launch
            if instance is not None:
                _stop_runs(instance)
            stop_group(dagster, tree, DAGSTER_STOP_WAIT_S)
            if instance is not None:
                _close_orphaned_runs(instance)
    finally:
        stop_process(llm_server)  # after the workers (they may still be finishing a call), before the broker
        if broker_state_file is not None:
            stopped = stop_cluster(broker_state_file, timeout_s=BROKER_STOP_TIMEOUT_S)
            if stopped is not None:
                print(f"stopped the local broker at {stopped.bootstrap}", file=sys.stderr)
        print(f"cv-queue dev stopped in {time.monotonic() - started:.1f}s", file=sys.stderr)


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


def cmd_dev(args: argparse.Namespace) -> int:
    # Ctrl-C, `kill`, `timeout` and CI all stop us the same way, and everything is cleaned up. Installed here
    # although main() did already, because the children started below must get SIGINT back at its default even if
    # we inherited it ignored: `dagster dev` is stopped with SIGINT first (cli/signals.py).
    raise_on_stop_signals()
    env = dict(os.environ)
    for key, value in DEMO_ENV.items():
        env.setdefault(key, value)
    # Dagster's own CLI warns about its superseded options (a FutureWarning raised through click) on every start;
    # the operator can do nothing about it, so `make run` does not show it.
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), "ignore::FutureWarning:click.core"]))
    state_dir = args.state_dir.expanduser().resolve()
    broker_state_file: Path | None = None
    dagster: subprocess.Popen | None = None
    tree: ProcessTree | None = None
    instance = None
    llm_server: subprocess.Popen | None = None
    home_lock: TextIO | None = None
    interrupted = False
    try:
        llm_server = _use_llm(args, env)
        if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            state_file, data_dir = state_dir / "broker-state.json", state_dir / "kafka-data"
            if args.fresh:
                stop_cluster(state_file, progress=False)
                shutil.rmtree(data_dir, ignore_errors=True)
            state = start_cluster(1, args.broker_port, data_dir=data_dir, state_file=state_file)
            broker_state_file = state_file
            env["KAFKA_BOOTSTRAP_SERVERS"] = state.bootstrap
            print(f"local Kafka ready at {state.bootstrap}", file=sys.stderr)
        home = _dagster_home(args.fresh)
        home_lock = _own_dagster_home(home, args.port)  # held until this process ends
        env["DAGSTER_HOME"] = str(home)
        instance = _open_instance(home)
        _close_runs_left_by_a_crash(instance)
        _set_fleet_stopped(instance, False)  # the last stop stopped the fleet; this start resumes it
        bin_dir = Path(sys.executable).parent
        dagster = subprocess.Popen(
            [str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)],
            env=env, cwd=PROJECT_ROOT, start_new_session=True,
        )
        tree = ProcessTree(dagster.pid)
        _wait_http(f"http://127.0.0.1:{args.port}/server_info", 180, dagster)
        _run_step([str(bin_dir / "dagster"), "asset", "materialize", "--select", "group:kafka_topics",
                   "-m", "cv_queue.definitions"], env)
        if args.sample_jobs:
            _run_step([str(bin_dir / "cv-queue"), "enqueue", "--count", str(args.sample_jobs), "--transient", "0.1",
                       "--permanent", "0.05", "--until-replay", "0.05", "--invalid", "6"], env)
        print(
            f"\ncv-queue is running.\n  Dagster UI:  http://127.0.0.1:{args.port}\n"
            f"  broker:      {env['KAFKA_BOOTSTRAP_SERVERS']}\n"
            f"  LLM:         {env.get('CVQ_LLM__BASE_URL', 'simulated') if args.llm != 'simulated' else 'simulated'}\n"
            f"  metrics:     {_metrics_urls()}\n"
            "  try:        .venv/bin/cv-queue status | .venv/bin/cv-queue dlq peek\n"
            "Press Ctrl-C to stop everything.\n",
            file=sys.stderr,
        )
        dagster.wait()
        print(f"dagster dev exited on its own (code {dagster.returncode})", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _shutdown(dagster, tree, instance, broker_state_file, llm_server)
        if home_lock is not None:
            home_lock.close()  # after the stop: a new cv-queue dev may take over the instance now
    return 0 if interrupted else 1
