"""The Dagster path over SASL_SSL, with a real dagster-daemon and real runs, then the secret sweep.

The code location reads every credential from its environment (passwords as EnvVar): the topic assets log in as
cvq-admin and apply the ACLs, the fleet sensor's worker runs as cvq-worker, `reprocess_dlq` as cvq-replayer, and
jobs are enqueued as cvq-producer. Jobs that outlast the retry topic are dead-lettered, replayed by reprocess_dlq
and then evaluated: every job has exactly one result.

Afterwards no password is anywhere: not in any file of DAGSTER_HOME (logs, compute logs, the SQLite run and
event-log storage, decompressed snapshots included), the daemon's and the CLI's stdout/stderr, run configs, the
materialization metadata, the dead letters' headers, nor `cv-queue config`'s output. Each place is also searched
for a string known to be there, so an empty result means the search read it.
"""

import json
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cv_queue.defs.resources import SASL_ENV, Principal
from cv_queue.defs.topics import asset_key
from cv_queue.evaluation.samples import sample_jobs
from cv_queue.kafka.admin.acls import ADMIN, PRODUCER, REPLAYER, WORKER, acl_rules
from cv_queue.kafka.admin.topics import TopicRole
from cv_queue.kafka.client.producer import JobProducer
from cv_queue.settings import QueueSettings
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.daemon import running_daemon
from cv_queue_tests.security.sweep import Hits, search_files, search_text
from cv_queue_tests.support import read_topic, unique, wait_for

pytestmark = pytest.mark.daemon

PARTITIONS = 4  # two worker slots: a fleet, at half the processes of the default layout
SLOTS = ["0-1", "2-3"]
PLAIN_JOBS, REPLAYED_JOBS = 30, 4
USERS = {Principal.ADMIN: ADMIN, Principal.WORKER: WORKER, Principal.REPLAYER: REPLAYER}


def dagster_env(cluster, namespace: str) -> dict[str, str]:
    """What a deployment sets for the code location, the daemon and the runs it launches."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SSL_CA_LOCATION": str(cluster.ca_path),
        "CVQ_NAMESPACE": namespace,
        "CVQ_TOPICS__APPLY_ACLS": "true",
        "CVQ_TOPICS__PARTITIONS": str(PARTITIONS),
        "CVQ_WORKER__HANDLER": "cv_queue.evaluation.simulated:SimulatedLLM",
        "CVQ_WORKER__HANDLER_OPTIONS": json.dumps({"latency_ms": 10}),
        "CVQ_WORKER__MAX_IN_FLIGHT": "8",
        "CVQ_RETRY__MAX_ATTEMPTS": "2",  # one trip through the retry topic, then the DLQ
        "CVQ_RETRY__BASE_DELAY_MS": "200",
        "CVQ_METRICS__ENABLED": "false",  # fixed ports would collide with tests running beside this one
        "CVQ_REPLAY__SENSOR_INTERVAL_S": "3600",  # reprocess_dlq is launched by hand below
    }
    for principal, (user_var, password_var) in SASL_ENV.items():
        env[user_var] = USERS[principal]
        env[password_var] = cluster.passwords[USERS[principal]]
    return env


@dataclass
class SecuredRun:
    """What the Dagster run left behind, for the assertions and the sweep."""

    settings: QueueSettings
    home: Path
    outputs: dict[str, str] = field(default_factory=dict)  # captured stdout/stderr, by command
    run_configs: dict[str, str] = field(default_factory=dict)  # run id -> its config, as JSON
    materializations: dict[str, str] = field(default_factory=dict)  # asset -> its metadata, serialized
    acls_applied: int = 0
    worker_runs: list[dg.DagsterRun] = field(default_factory=list)
    replay_run: dg.DagsterRun | None = None
    results: Counter = field(default_factory=Counter)
    dead_letter_headers: list[str] = field(default_factory=list)


def _cli(daemon, name: str, run: SecuredRun, *args: str) -> None:
    proc = daemon.cli(*args)
    run.outputs[name] = proc.stdout + proc.stderr
    assert proc.returncode == 0, run.outputs[name][-3000:]


def _started_worker_runs(daemon) -> list[dg.DagsterRun]:
    return list(daemon.instance.get_runs(filters=dg.RunsFilter(job_name="partition_worker",
                                                               statuses=[dg.DagsterRunStatus.STARTED])))


@pytest.fixture(scope="module")
def secured_run(secure_cluster, tmp_path_factory) -> SecuredRun:
    tmp_path = tmp_path_factory.mktemp("dagster-secured")
    namespace = unique("sd")
    settings = QueueSettings(namespace=namespace, topics={"partitions": PARTITIONS})
    run = SecuredRun(settings=settings, home=tmp_path / "dagster_home")
    admin = secure_cluster.connection(ADMIN)
    with running_daemon(tmp_path, namespace, dagster_env(secure_cluster, namespace)) as daemon:
        _cli(daemon, "asset materialize", run, "asset", "materialize", "--select",
             ",".join(asset_key(role).to_user_string() for role in TopicRole),
             "-m", "cv_queue.definitions", "-a", "defs")
        for role in TopicRole:
            event = daemon.instance.get_latest_materialization_event(asset_key(role))
            assert event is not None, role
            metadata = event.asset_materialization.metadata
            run.acls_applied += metadata["acls_applied"].value
            run.materializations[role.value] = dg.serialize_value(metadata)

        wait_for(lambda: len(_started_worker_runs(daemon)) == len(SLOTS), 180,
                 "the fleet sensor to start a worker run per slot")
        run.worker_runs = _started_worker_runs(daemon)
        plain = list(sample_jobs(PLAIN_JOBS, seed=31, prefix="sec-plain"))
        replayed = list(sample_jobs(REPLAYED_JOBS, seed=32, prefix="sec-replay",
                                    labels_for={i: {"simulate": "transient-until-replay"}
                                                for i in range(REPLAYED_JOBS)}))
        JobProducer(secure_cluster.connection(PRODUCER), settings.topic_names.main).enqueue_batch(plain + replayed)
        read_topic(admin, settings.topic_names.results, expect=PLAIN_JOBS, timeout_s=120)
        letters = read_topic(admin, settings.topic_names.dlq, expect=REPLAYED_JOBS, timeout_s=120)
        run.dead_letter_headers = [f"{k}={v!r}" for m in letters for k, v in (m.headers() or [])]

        config = tmp_path / "replay.yaml"
        config.write_text(yaml.safe_dump({"ops": {"reprocess_dead_letters": {"config": {
            "categories": ["transient"], "max_messages": 100}}}}))
        _cli(daemon, "job launch reprocess_dlq", run, "job", "launch", "-j", "reprocess_dlq", "-w", "workspace.yaml",
             "-c", str(config))
        [replay] = daemon.instance.get_runs(filters=dg.RunsFilter(job_name="reprocess_dlq"))
        run.replay_run = daemon.wait_run(replay.run_id, {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE},
                                         180)
        results = read_topic(admin, settings.topic_names.results, expect=PLAIN_JOBS + REPLAYED_JOBS, timeout_s=120)
        run.results = Counter(m.key().decode() for m in results)
        for stored in daemon.instance.get_runs():
            run.run_configs[stored.run_id] = json.dumps(stored.run_config)
    run.outputs["daemon"] = (tmp_path / "daemon.log").read_text(errors="replace")  # the runs' own output too
    config_cmd = subprocess.run([CV_QUEUE, "config"], env=secure_cluster.env(ADMIN), capture_output=True,
                                text=True, timeout=60, check=True)
    run.outputs["cv-queue config"] = config_cmd.stdout + config_cmd.stderr
    return run


def test_topic_assets_apply_the_acls_the_fleet_works_and_reprocess_dlq_replays(secured_run: SecuredRun):
    assert secured_run.acls_applied == len(acl_rules(secured_run.settings))  # every rule, by one asset or another
    assert sorted(r.tags["cv-queue/worker-slot"] for r in secured_run.worker_runs) == SLOTS
    assert secured_run.replay_run is not None and secured_run.replay_run.status == dg.DagsterRunStatus.SUCCESS
    assert len(secured_run.results) == PLAIN_JOBS + REPLAYED_JOBS  # the replayed jobs were evaluated too
    assert max(secured_run.results.values()) == 1  # exactly once


def _sweep(run: SecuredRun, needles: list[str]) -> dict[str, Hits]:
    places = {"DAGSTER_HOME files": search_files(run.home, needles)}
    for name, text in run.outputs.items():
        places[f"output of {name}"] = search_text(text, needles, name)
    places["run configs"] = search_text("\n".join(run.run_configs.values()), needles, "run configs")
    places["materialization metadata"] = search_text("\n".join(run.materializations.values()), needles, "metadata")
    places["dead-letter headers"] = search_text("\n".join(run.dead_letter_headers), needles, "headers")
    return places


def test_no_password_anywhere_after_the_run(secured_run: SecuredRun, secure_cluster):
    passwords = list(secure_cluster.passwords.values())
    known = {  # a string each place certainly holds: its search reads what it says it reads
        "DAGSTER_HOME files": "KAFKA_WORKER_SASL_PASSWORD",  # the EnvVar's name, in the stored job snapshots
        "output of asset materialize": "RUN_SUCCESS",
        "output of job launch reprocess_dlq": "cv_queue.definitions",  # its code server's log lines
        "output of daemon": "partition_worker",
        "output of cv-queue config": "KAFKA_SASL_PASSWORD",
        "run configs": "transient",
        "materialization metadata": WORKER,
        "dead-letter headers": "TransientJobError",
    }
    swept = _sweep(secured_run, [*passwords, *known.values()])
    assert set(swept) == set(known)
    for place, hits in swept.items():
        assert hits.places(known[place]), f"{place}: the known string {known[place]!r} was not found"
        leaks = {p: hits.places(p) for p in passwords if hits.places(p)}
        assert leaks == {}, f"{place}: a password was found in {leaks}"
    sqlite = [p for p in secured_run.home.rglob("*.db")]
    assert sqlite, "the run and event-log storage (SQLite) was swept"
