"""docker-compose.yml and the Dagster instance configs, checked against what the code reads.

Docker cannot run here, so the deployment is kept correct by parsing it: service names, ports, the
environment the code reads, and the instance config validated by Dagster's own schema.
"""

import importlib
import re
from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

from cv_queue.defs import tags
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


@pytest.mark.parametrize("folder", [PROJECT_ROOT, PROJECT_ROOT / "deploy" / "docker"], ids=["local", "docker"])
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
    local, docker = _instance(PROJECT_ROOT), _instance(PROJECT_ROOT / "deploy" / "docker")
    assert "sqlite" in local["storage"] and local["run_launcher"]["class"] == "DefaultRunLauncher"
    from dagster_postgres import DagsterPostgresStorage

    assert validate_config(DagsterPostgresStorage.config_type(), docker["storage"]["postgres"]).success
    launcher = docker["run_launcher"]
    assert launcher["class"] == "DockerRunLauncher"
    assert launcher["config"]["network"] == COMPOSE["networks"]["default"]["name"]
    forwarded = set(launcher["config"]["env_vars"])
    needed = {k for k in _env("user-code") if k.startswith(("CVQ_", "KAFKA_", "DAGSTER_POSTGRES_"))}
    assert needed <= forwarded, f"run containers would miss {needed - forwarded}"
    assert _env("user-code")["DAGSTER_CURRENT_IMAGE"] == SERVICES["user-code"]["image"]
    assert launcher["config"]["container_kwargs"]["stop_timeout"] >= 30


def test_dagster_images_are_the_built_user_code_image():
    image = SERVICES["user-code"]["image"]
    for service in ("dagster-webserver", "dagster-daemon"):
        assert SERVICES[service]["image"] == image
    dockerfile = (PROJECT_ROOT / SERVICES["user-code"]["build"]["dockerfile"]).read_text()
    assert "deploy/docker/dagster.yaml" in dockerfile
    for service in ("dagster-webserver", "dagster-daemon"):
        workspace = SERVICES[service]["command"][-1]
        assert (PROJECT_ROOT / workspace).is_file()
        loaded = yaml.safe_load((PROJECT_ROOT / workspace).read_text())
        grpc = loaded["load_from"][0]["grpc_server"]
        assert grpc["host"] == "user-code"
        assert str(grpc["port"]) in SERVICES["user-code"]["command"]
