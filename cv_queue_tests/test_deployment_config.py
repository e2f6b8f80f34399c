"""docker-compose.yml and the Dagster instance configs, checked against what the code reads.

Docker cannot run here, so the deployment is kept correct by parsing it: service names, ports, the
environment the code reads, and the instance config validated by Dagster's own schema.
"""

import importlib
import json
import re
import types
import typing
from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from pydantic import SecretStr, ValidationError

from cv_queue.defs import tags
from cv_queue.defs.dlq import REPLAY_JOB
from cv_queue.defs.workers import WORKER_JOB
from cv_queue.deploy.settings_env import run_env_vars, secret_env_vars
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.conftest import PROJECT_ROOT

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DAGSTER_SERVICES = ("user-code", "dagster-webserver", "dagster-daemon")


def _env(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    return {k: str(v) for k, v in env.items()}


def _published(service: str) -> set[int]:
    return {int(str(p).split(":")[0]) for p in SERVICES[service].get("ports", [])}


def test_services_and_ports():
    assert {"redpanda", "console", "postgres", *DAGSTER_SERVICES} <= set(SERVICES)
    assert 8080 in _published("console")
    assert 3000 in _published("dagster-webserver")
    assert "--smp=1" in SERVICES["redpanda"]["command"]  # one node, one core: the single-host deployment
    image = SERVICES["redpanda"]["image"]
    assert re.search(r":v\d+\.\d+\.\d+$", image), f"redpanda image must be pinned: {image}"


def test_bootstrap_points_at_redpandas_advertised_internal_listener():
    command = " ".join(SERVICES["redpanda"]["command"])
    advertised = re.search(r"--advertise-kafka-addr=internal://([^,\s]+)", command).group(1)
    for service in DAGSTER_SERVICES:
        assert _env(service)["KAFKA_BOOTSTRAP_SERVERS"] == advertised
    assert SERVICES["console"]["environment"]["KAFKA_BROKERS"] == advertised


def test_every_cv_queue_variable_in_compose_is_one_the_code_reads(monkeypatch):
    env = _env("user-code")
    for key in [k for k in env if k.startswith(("CVQ_", "KAFKA_"))]:
        monkeypatch.setenv(key, env[key])
    conn, qs = KafkaConnection(), QueueSettings()
    assert conn.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert str(qs.topics.replication_factor) == env["CVQ_TOPICS__REPLICATION_FACTOR"]
    assert qs.worker.handler == env["CVQ_WORKER__HANDLER"]
    known_top = {f"CVQ_{name.upper()}" for name in QueueSettings.model_fields}
    # The one CVQ_ variable that is not a queue setting: the production instance's launcher choice.
    from cv_queue.deploy.run_launcher import CHOICES, LAUNCHER_ENV_VAR

    assert env[LAUNCHER_ENV_VAR] in CHOICES
    for key in [k for k in env if k.startswith("CVQ_") and k != LAUNCHER_ENV_VAR]:
        assert key.split("__")[0] in known_top, f"{key} is not a cv-queue setting"
        section, _, field = key.removeprefix("CVQ_").lower().partition("__")
        if field:
            sub = QueueSettings.model_fields[section].annotation
            assert field in sub.model_fields, f"{key}: {sub.__name__} has no field {field}"


def test_postgres_credentials_match():
    pg = SERVICES["postgres"]["environment"]
    for service in DAGSTER_SERVICES:
        env = _env(service)
        assert env["DAGSTER_POSTGRES_USER"] == pg["POSTGRES_USER"]
        assert env["DAGSTER_POSTGRES_PASSWORD"] == pg["POSTGRES_PASSWORD"]
        assert env["DAGSTER_POSTGRES_DB"] == pg["POSTGRES_DB"]
        assert env["DAGSTER_POSTGRES_HOST"] == "postgres"


def _instance(folder: Path) -> dict:
    config, _ = dagster_instance_config(str(folder), "dagster.yaml")
    return config


def _validate_section(section: dict) -> None:
    klass = getattr(importlib.import_module(section["module"]), section["class"])
    result = validate_config(klass.config_type(), section.get("config", {}))
    assert result.success, result.errors


@pytest.mark.parametrize("folder", [PROJECT_ROOT, PROJECT_ROOT / "deploy"], ids=["local", "production"])
def test_instance_configs_are_valid_and_limit_slots(folder):
    config = _instance(folder)
    _validate_section(config["run_launcher"])
    _validate_section(config["run_coordinator"])
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] is True
    tag_limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    limits = {(lim["key"], str(lim.get("value"))): lim["limit"] for lim in tag_limits}
    assert limits[(tags.WORKER_SLOT, str({"applyLimitPerUniqueValue": True}))] == 1
    assert limits[(tags.ROLE, tags.ROLE_DLQ_REPLAY)] == 1
    assert limits[(tags.ROLE, tags.ROLE_FLEET_CONTROL)] == 1
    # Worker runs never end: any overall cap lets a big enough fleet queue the jobs that stop it behind it.
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == -1


def test_local_default_is_sqlite_and_docker_uses_postgres_and_containers():
    local, docker = _instance(PROJECT_ROOT), _instance(PROJECT_ROOT / "deploy")
    assert "sqlite" in local["storage"] and local["run_launcher"]["class"] == "DefaultRunLauncher"
    from dagster_postgres import DagsterPostgresStorage

    assert validate_config(DagsterPostgresStorage.config_type(), docker["storage"]["postgres"]).success
    assert docker["run_launcher"]["class"] == "SelectedRunLauncher"  # DockerRunLauncher when CVQ_RUN_LAUNCHER=docker
    containers = docker["run_launcher"]["config"]["docker"]
    assert containers["network"] == COMPOSE["networks"]["default"]["name"]
    forwarded = set(containers["env_vars"])
    needed = {k for k in _env("user-code") if k.startswith(("CVQ_", "KAFKA_", "DAGSTER_POSTGRES_"))}
    assert needed <= forwarded, f"run containers would miss {needed - forwarded}"
    assert _env("user-code")["DAGSTER_CURRENT_IMAGE"] == SERVICES["user-code"]["image"]
    assert containers["container_kwargs"]["stop_timeout"] >= 30


def test_dagster_images_are_the_built_user_code_image():
    image = SERVICES["user-code"]["image"]
    for service in ("dagster-webserver", "dagster-daemon"):
        assert SERVICES[service]["image"] == image
    dockerfile = (PROJECT_ROOT / SERVICES["user-code"]["build"]["dockerfile"]).read_text()
    assert "deploy/dagster.yaml" in dockerfile
    for service in ("dagster-webserver", "dagster-daemon"):
        workspace = SERVICES[service]["command"][-1]
        assert (PROJECT_ROOT / workspace).is_file()
        loaded = yaml.safe_load((PROJECT_ROOT / workspace).read_text())
        grpc = loaded["load_from"][0]["grpc_server"]
        assert grpc["host"] == "user-code"
        assert str(grpc["port"]) in SERVICES["user-code"]["command"]


# ---------------------------------------------------------------- the `monitoring` profile: Prometheus and Grafana

PROMETHEUS_DIR = PROJECT_ROOT / "deploy" / "prometheus"
GRAFANA_DIR = PROJECT_ROOT / "deploy" / "grafana"
MONITORING = ("prometheus", "grafana")


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts of project folders."""
    out = {}
    for volume in SERVICES[service].get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("./"):
            out[container] = PROJECT_ROOT / host
    return out


def _flag(service: str, name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in SERVICES[service]["command"] if arg.startswith(f"--{name}="))


def _prometheus_config() -> dict:
    config_file = Path(_flag("prometheus", "config.file"))
    host_dir = _mounts("prometheus")[str(config_file.parent)]
    assert host_dir == PROMETHEUS_DIR
    return yaml.safe_load((host_dir / config_file.name).read_text())


def _scrape_job(name: str) -> dict:
    return next(job for job in _prometheus_config()["scrape_configs"] if job["job_name"] == name)


def test_monitoring_services_are_a_profile_of_their_own_with_pinned_images():
    for service in MONITORING:
        assert SERVICES[service]["profiles"] == ["monitoring"]
        assert re.search(r":v?\d+\.\d+\.\d+$", SERVICES[service]["image"]), SERVICES[service]["image"]
        # Host networking: Prometheus reaches `make run`'s processes on 127.0.0.1 and the run containers' addresses.
        assert SERVICES[service]["network_mode"] == "host"
    for service in set(SERVICES) - set(MONITORING):
        assert "profiles" not in SERVICES[service], f"{service} must start without a profile"


def test_prometheus_and_grafana_listen_where_nothing_else_does():
    prometheus_port = int(_flag("prometheus", "web.listen-address").rsplit(":", 1)[1])
    grafana_port = int(_env("grafana")["GF_SERVER_HTTP_PORT"])
    metrics = QueueSettings().metrics
    taken = {p for s in SERVICES for p in _published(s)} | {metrics.replay_port} | {
        metrics.worker_port_base + i for i in range(len(QueueSettings().slots()))}
    assert {prometheus_port, grafana_port}.isdisjoint(taken | {3000})  # 3000: Dagster's UI in `make run` too
    assert prometheus_port != grafana_port
    datasource = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == f"http://127.0.0.1:{prometheus_port}"
    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "cv-queue.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"} == {source["uid"]}


def test_grafana_loads_the_provisioning_and_the_dashboard_folder_it_names():
    mounts = _mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "cv-queue.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == GRAFANA_DIR / "dashboards"
    home = _env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[str(Path(home).parent)] / Path(home).name).is_file()


def test_scrape_targets_are_the_ports_workers_and_replays_serve():
    settings = QueueSettings()
    worker_ports = {settings.metrics.worker_port_base + i for i, _ in enumerate(settings.slots())}
    workers = _scrape_job("cv-queue-workers")["static_configs"][0]["targets"]
    assert set(workers) == {f"127.0.0.1:{port}" for port in worker_ports}
    (replay,) = _scrape_job("cv-queue-replay")["static_configs"][0]["targets"]
    assert replay == f"127.0.0.1:{settings.metrics.replay_port}"
    # The run containers of the Docker deployment: found by the job-name label DockerRunLauncher sets.
    containers = _scrape_job("cv-queue-worker-containers")["docker_sd_configs"]
    assert {sd["port"] for sd in containers} == worker_ports
    assert {sd["filters"][0]["values"][0] for sd in containers} == {f"dagster/job_name={WORKER_JOB}"}
    (replay_sd,) = _scrape_job("cv-queue-replay-containers")["docker_sd_configs"]
    assert replay_sd["port"] == settings.metrics.replay_port
    assert replay_sd["filters"][0]["values"] == [f"dagster/job_name={REPLAY_JOB}"]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in SERVICES["prometheus"]["volumes"]
    # ...which serve on their network address, not the container's loopback.
    assert _env("user-code")["CVQ_METRICS__HOST"] == "0.0.0.0"


def test_prometheus_loads_the_alert_rules_and_expects_every_slot():
    config = _prometheus_config()
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file()
    rules = {r["alert"]: r for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    expected = int(re.search(r"<\s*(\d+)\s*$", rules["CvQueueWorkerDown"]["expr"].strip()).group(1))
    assert expected == len(QueueSettings().slots())


# ---------------------------------------------------------------- a compose deployment that survives (issue 12)

SCHEMAS = PROJECT_ROOT / "cv_queue_tests" / "schemas"
LOCAL_IMAGE = SERVICES["user-code"]["image"]
ONE_SHOT = ("provision",)
DAGSTER_STORAGE_VOLUME = "dagster-storage"


def test_compose_file_is_valid_against_the_compose_specification():
    """The Compose Specification's own JSON schema (vendored from compose-spec/compose-spec, Apache-2.0)."""
    import jsonschema

    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(COMPOSE)]
    assert not errors, errors


def test_every_long_running_service_restarts_and_the_one_shot_does_not():
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} must run once per `up`"
        else:
            # unless-stopped also brings a service back after a host or Docker restart (on-failure does not).
            assert service.get("restart") == "unless-stopped", f"{name} has restart {service.get('restart')!r}"


def test_the_locally_built_image_is_built_once_and_never_pulled():
    users = {name: s for name, s in SERVICES.items() if s.get("image") == LOCAL_IMAGE}
    assert {"provision", *DAGSTER_SERVICES} <= set(users)
    builders = [name for name, s in users.items() if "build" in s]
    assert builders == ["user-code"]
    for name, service in users.items():
        assert service["pull_policy"] == ("build" if name in builders else "never"), name


def _depends(service: str) -> dict[str, str]:
    depends = SERVICES[service].get("depends_on", {})
    assert isinstance(depends, dict), f"{service}: depends_on must name conditions"
    return {name: spec["condition"] for name, spec in depends.items()}


def test_topics_are_provisioned_before_any_dagster_service_starts():
    assert _depends("provision") == {"redpanda": "service_healthy", "postgres": "service_healthy"}
    for service in DAGSTER_SERVICES:
        assert _depends(service)["provision"] == "service_completed_successfully", service
    command = SERVICES["provision"]["command"]
    assert command[:3] == ["dagster", "asset", "materialize"]
    assert command[command.index("-m") + 1] == "cv_queue.definitions"


def test_the_provision_selection_is_exactly_the_topic_assets():
    """Resolved the way `dagster asset materialize --select` resolves it."""
    import dagster as dg

    from cv_queue.definitions import defs
    from cv_queue.defs.topics import asset_key
    from cv_queue.kafka.admin.topics import TopicRole

    command = SERVICES["provision"]["command"]
    selection = dg.AssetSelection.from_coercible(command[command.index("--select") + 1].split(","))
    selected = selection.resolve(defs.get_repository_def().asset_graph)
    assert selected == {asset_key(role) for role in TopicRole}


def _dockerfile_steps() -> list[tuple[str, str]]:
    text = (PROJECT_ROOT / SERVICES["user-code"]["build"]["dockerfile"]).read_text()
    joined = re.sub(r"\\\n", " ", text)
    steps = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def _copy_sources() -> list[str]:
    return [src for kind, rest in _dockerfile_steps() if kind == "COPY" for src in rest.split()[:-1]]


def test_dockerfile_installs_the_dependencies_before_it_copies_the_code():
    steps = _dockerfile_steps()
    code_copied = next(i for i, (kind, rest) in enumerate(steps) if kind == "COPY" and "cv_queue" in rest.split())
    deps_at = next(i for i, (kind, rest) in enumerate(steps) if kind == "RUN" and "pip install -r" in rest)
    assert deps_at < code_copied
    # Only pyproject.toml reaches the dependency layer: a change anywhere else leaves it cached.
    assert [rest for kind, rest in steps[:deps_at] if kind == "COPY"] == ["pyproject.toml ./"]
    deps_step = steps[deps_at][1]
    project_install = next(rest for kind, rest in steps[code_copied:] if kind == "RUN" and "pip install" in rest)
    assert "--no-deps" in project_install, "the project install must not reinstall the dependencies"
    # The requirements the dependency layer installs: run its own extraction against pyproject.toml.
    script = re.search(r"python -c '([^']+)'", deps_step).group(1)
    import subprocess
    import sys
    import tomllib

    out = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for a path of the context: matched by a pattern, or inside a folder that is."""
    from fnmatch import fnmatchcase

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(prefix, pattern.removeprefix("**/")) or fnmatchcase(prefix, pattern)
               or (pattern.startswith("**/") and fnmatchcase(part, pattern.removeprefix("**/")))
               for pattern in patterns for prefix in prefixes for part in [prefix.rsplit("/", 1)[-1]])


def test_dockerignore_keeps_local_state_out_and_what_the_build_copies_in():
    patterns = [line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)  # the matcher above has no exceptions
    for local in (".venv", ".git", ".dagster_home", ".cvq", ".pytest_cache", ".ruff_cache", ".hypothesis",
                  "cv_queue/__pycache__", ".venv/lib/python3.11/site-packages"):
        assert _dockerignored(local, patterns), f"{local} would be sent to the Docker daemon"
    for source in _copy_sources():
        assert (PROJECT_ROOT / source).exists(), f"COPY {source}: no such file"
        assert not _dockerignored(source, patterns), f"COPY {source} is excluded by .dockerignore"


def test_redpanda_never_auto_creates_topics():
    command = SERVICES["redpanda"]["command"]
    assert not any(arg.startswith("--mode") for arg in command), "dev-container mode turns auto-creation on"
    assert not any("auto_create_topics_enabled=true" in arg for arg in command)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["redpanda"]["volumes"]}
    bootstrap = yaml.safe_load((PROJECT_ROOT / mounts["/etc/redpanda/.bootstrap.yaml"]).read_text())
    assert bootstrap["auto_create_topics_enabled"] is False


def test_the_provision_command_creates_the_topics_on_a_real_broker(bootstrap, tmp_path, namespace):
    """The `provision` service's own command and environment, against this session's broker (only the address, the
    namespace and the Dagster instance differ: a SQLite one here; the Postgres one is the production test's)."""
    import os
    import shutil
    import subprocess
    import sys

    from cv_queue.kafka.admin.topics import describe_topics, diff_topic, topic_specs
    from cv_queue.kafka.client.clients import admin_client

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, **_env("provision"), "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CVQ_NAMESPACE": namespace,
           "DAGSTER_HOME": str(home)}
    command = [str(Path(sys.executable).parent / SERVICES["provision"]["command"][0]),
               *SERVICES["provision"]["command"][1:]]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240,
                          start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    settings = QueueSettings(namespace=namespace)
    specs = topic_specs(settings)
    states = describe_topics(admin_client(KafkaConnection(bootstrap_servers=bootstrap)), [s.name for s in specs])
    for spec in specs:
        assert not diff_topic(spec, states.get(spec.name)).drifted, spec.name


# Run containers: deploy/dagster.yaml's DockerRunLauncher config (run_launcher.config.docker, CVQ_RUN_LAUNCHER=docker).
# Compose finds a project's containers by label (docker/compose pkg/compose/containers.go, getDefaultFilters):
# com.docker.compose.project=<name> and a com.docker.compose.config-hash label; `down --remove-orphans` removes those
# whose com.docker.compose.service is not in the file (isOrphaned) unless com.docker.compose.oneoff is True and
# they are still running.
IMAGE_DAGSTER_HOME = "/opt/dagster/dagster_home"


def _docker_launcher() -> dict:
    return _instance(PROJECT_ROOT / "deploy")["run_launcher"]["config"]["docker"]


def test_run_containers_are_this_projects_compose_orphans():
    labels = _docker_launcher()["container_kwargs"]["labels"]
    assert labels["com.docker.compose.project"] == COMPOSE["name"]
    assert "com.docker.compose.config-hash" in labels
    assert labels["com.docker.compose.service"] not in SERVICES  # an orphan: `down --remove-orphans` removes it
    assert labels["com.docker.compose.oneoff"] == "False"  # a running one-off is never an orphan
    assert not any(key.startswith("dagster/") for key in labels)  # DockerRunLauncher sets those itself


def test_run_container_kwargs_are_what_docker_py_creates_containers_from():
    """Through docker-py's own conversion of containers.create() arguments (it raises on an unknown one), the way
    DockerRunLauncher passes them: stop_timeout is taken out (it is used by terminate), labels merged."""
    from dagster_docker import DockerRunLauncher
    from docker.models.containers import _create_container_args

    config = _docker_launcher()
    DockerRunLauncher(**config)  # its own checks of the config (no Docker needed)
    kwargs = {k: v for k, v in config["container_kwargs"].items() if k != "stop_timeout"}
    created = _create_container_args({**kwargs, "image": LOCAL_IMAGE, "command": ["dagster", "api"], "detach": True,
                                      "environment": {}, "network": config["network"], "version": "1.44"})
    host = created["host_config"]
    assert host["AutoRemove"] is True, "exited run containers must remove themselves"
    volume = COMPOSE["volumes"][DAGSTER_STORAGE_VOLUME]["name"]
    storage = f"{IMAGE_DAGSTER_HOME}/storage"
    assert f"{volume}:{storage}:rw" in host["Binds"]
    assert created["labels"]["com.docker.compose.project"] == COMPOSE["name"]


def test_run_compute_logs_land_on_the_volume_the_webserver_reads(monkeypatch, tmp_path):
    """The instance's compute log manager, as the InstanceRef handed to every run container resolves it."""
    import shutil

    from dagster._core.instance.ref import InstanceRef

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for key, value in _env("dagster-daemon").items():
        monkeypatch.setenv(key, value)
    ref = InstanceRef.from_dir(str(home))
    logs = ref.compute_logs_data
    assert logs.class_name == "LocalComputeLogManager"
    base_dir = Path(yaml.safe_load(logs.config_yaml)["base_dir"])
    in_image = Path(IMAGE_DAGSTER_HOME) / base_dir.relative_to(home)  # the same path under the image's DAGSTER_HOME
    mount = f"{DAGSTER_STORAGE_VOLUME}:{in_image}"
    # user-code too: the code server writes the sensor tick logs (worker_fleet_sensor's context.log) there.
    for service in ("dagster-webserver", "dagster-daemon", "provision", "user-code"):
        assert any(v.startswith(mount) for v in SERVICES[service]["volumes"]), f"{service} lacks {mount}"
    volume = COMPOSE["volumes"][DAGSTER_STORAGE_VOLUME]["name"]
    assert any(v.startswith(f"{volume}:{in_image}") for v in _docker_launcher()["container_kwargs"]["volumes"])
    dockerfile = (PROJECT_ROOT / SERVICES["user-code"]["build"]["dockerfile"]).read_text()
    assert f"DAGSTER_HOME={IMAGE_DAGSTER_HOME}" in dockerfile


def test_dagster_services_load_the_production_instance_with_the_docker_launcher():
    for service in ("provision", *DAGSTER_SERVICES):
        assert f"./deploy/dagster.yaml:{IMAGE_DAGSTER_HOME}/dagster.yaml:ro" in SERVICES[service]["volumes"]
        assert _env(service)["CVQ_RUN_LAUNCHER"] == "docker"
    assert "CVQ_RUN_LAUNCHER" in _docker_launcher()["env_vars"]


def _instance_env_vars() -> set[str]:
    """The production instance's own variables, which are not settings: its Postgres storage and the launcher choice."""
    from cv_queue.deploy.run_launcher import LAUNCHER_ENV_VAR

    storage = _instance(PROJECT_ROOT / "deploy")["storage"]["postgres"]["postgres_db"]
    return {LAUNCHER_ENV_VAR, *(ref["env"] for ref in storage.values() if isinstance(ref, dict))}


def _read_by_the_code(name: str) -> bool:
    """Whether a cv-queue process reads this environment variable (a setting, a principal's credentials, the LLM
    key's fallback, the launcher choice, the instance's Postgres storage), derived from the settings models."""
    return name in _instance_env_vars() or name in run_env_vars()


def _unforwarded(forwarded: list[str]) -> list[str]:
    """The variables a run needs that `forwarded` lacks, in the order run_env_vars() gives them."""
    return [name for name in [*sorted(_instance_env_vars()), *run_env_vars()] if name not in set(forwarded)]


def test_run_containers_get_every_setting():
    """deploy/dagster.yaml forwards exactly the instance's variables and every variable the settings models read
    (derived from the models by cv_queue.deploy.settings_env.run_env_vars(), not read from any file): a setting
    added to the model fails here until the file forwards it, and the file forwards nothing the code does not read."""
    forwarded = _docker_launcher()["env_vars"]
    assert len(forwarded) == len(set(forwarded)), "a variable is listed twice"
    missing = _unforwarded(forwarded)
    assert not missing, "deploy/dagster.yaml's env_vars lacks (paste these lines):\n" + "\n".join(
        f"        - {name}" for name in missing)
    extra = [name for name in forwarded if not _read_by_the_code(name)]
    assert not extra, f"the launcher forwards variables nothing reads: {extra}"
    # The variables the issue found missing, by name: the derivation covers them.
    assert {"CVQ_LLM__API_KEY", "CVQ_LLM__BASE_URL", "CVQ_WORKER__JOB_TIMEOUT_S", "CVQ_RETRY__MAX_ATTEMPTS",
            "OPENAI_API_KEY"} <= set(forwarded)


def test_secrets_are_forwarded_by_name_only():
    """A NAME=value entry would put the value into the instance file (and every run's config): every entry is a
    bare name, copied from the launching process's environment."""
    forwarded = _docker_launcher()["env_vars"]
    assert [entry for entry in forwarded if "=" in entry] == []
    assert set(secret_env_vars()) <= set(forwarded)


def test_a_setting_added_to_the_model_and_not_forwarded_fails_the_check(monkeypatch):
    """The check above derives what it expects from the model, not from the file: a new field shows up as missing."""
    from pydantic import Field

    from cv_queue.deploy import settings_env
    from cv_queue.settings import FleetSettings

    class GrownFleet(FleetSettings):
        drain_s: float = Field(1.0, description="a field someone adds to a section")

    class Grown(QueueSettings):
        new_knob: int = Field(1, description="a setting someone adds")
        fleet: GrownFleet = Field(default_factory=GrownFleet)

    monkeypatch.setattr(settings_env, "ROOTS", (KafkaConnection, Grown))
    assert _unforwarded(_docker_launcher()["env_vars"]) == ["CVQ_FLEET__DRAIN_S", "CVQ_NEW_KNOB"]


def _accepts_str(annotation: object) -> bool:
    """str, SecretStr, or an optional one (not a dict[str, ...]: its arguments name str too)."""
    if annotation in (str, SecretStr):
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and bool(
        {str, SecretStr} & set(typing.get_args(annotation)))


def test_the_derived_names_are_the_ones_pydantic_settings_reads(monkeypatch):
    """Not a copy of the naming rule: pydantic-settings itself reads every derived variable (prefixes and the nested
    delimiter included). A text setting set to a marker shows the marker in the built models; any other setting set
    to a value it cannot take makes building them fail, naming its field or section (an ignored name would not)."""
    from pydantic_settings import SettingsError

    from cv_queue.deploy.settings_env import settings_fields

    fields = list(settings_fields())
    text = [name for name, field in fields if _accepts_str(field.annotation)]
    assert len(text) >= 20
    for name in text:
        monkeypatch.setenv(name, f"marker-{name}")
    dumped = json.dumps([KafkaConnection().model_dump(), QueueSettings().model_dump()], default=_reveal)
    for name in text:
        assert f'"marker-{name}"' in dumped, f"pydantic-settings does not read {name}"
    for name, _ in fields:
        if name in text:
            continue
        with monkeypatch.context() as env:
            env.setenv(name, "@not-a-value")
            with pytest.raises((ValidationError, SettingsError)) as refused:
                KafkaConnection()
                QueueSettings()
            section, _, leaf = name.removeprefix("CVQ_").lower().partition("__")
            # A nested section's field (CVQ_LLM__BUDGET__BURST_S) is named with dots: llm.budget.burst_s.
            named = (leaf or section).replace("__", ".")
            assert named in str(refused.value) or f'"{section}"' in str(refused.value), name


def _reveal(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def test_every_setting_compose_names_reaches_the_run_containers():
    """A run container re-imports cv_queue.definitions and rebuilds its settings from the variables the launcher
    forwards: any the compose file sets (or its comments tell the operator to set) but the launcher drops would
    give runs other settings than the code server's (another namespace; the admin principal for workers)."""
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    named = set(re.findall(r"\b(?:KAFKA|CVQ|DAGSTER_POSTGRES)_[A-Z0-9_]+\b", text))
    read = {name for name in named if _read_by_the_code(name)}
    per_principal = {"KAFKA_WORKER_SASL_USERNAME", "KAFKA_WORKER_SASL_PASSWORD", "KAFKA_REPLAYER_SASL_USERNAME",
                     "KAFKA_REPLAYER_SASL_PASSWORD", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM"}
    assert per_principal <= read, "the SASL comment must name each principal's variables"
    forwarded = set(_docker_launcher()["env_vars"])
    assert read - forwarded == set(), f"run containers would not get {sorted(read - forwarded)}"
    assert all(_read_by_the_code(name) for name in forwarded), "the launcher forwards a variable nothing reads"
    # Secrets (passwords, API keys, the webhook URL) are interpolated from the shell or an .env file, never written
    # into the compose file.
    for name in secret_env_vars():
        for value in re.findall(rf"\b{name}:\s*(\S+)", text):
            assert value.startswith("${"), f"a secret is written into docker-compose.yml: {name}: {value}"
