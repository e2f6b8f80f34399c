"""docker-compose.yml and the Dagster instance configs, checked against what the code reads.

Docker cannot run here, so the deployment is kept correct by parsing it: service names, ports, the
environment the code reads, and the instance config validated by Dagster's own schema.
"""

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

from cv_queue.defs import tags
from cv_queue.defs.dlq import REPLAY_JOB
from cv_queue.defs.workers import WORKER_JOB
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
    assert "--mode=dev-container" in SERVICES["redpanda"]["command"]
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
    for key in [k for k in env if k.startswith("CVQ_")]:
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
