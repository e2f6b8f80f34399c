"""The production instance's one launcher setting: deploy/dagster.yaml's run_launcher section, loaded the way Dagster
loads it, builds DefaultRunLauncher or DockerRunLauncher (with the file's Docker config) from CVQ_RUN_LAUNCHER, refuses
anything else by naming the setting, and passes every RunLauncher method through."""

import inspect

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import RunLauncher
from dagster._core.utils import parse_env_var
from dagster._serdes import ConfigurableClassData
from dagster_docker import DockerRunLauncher

from cv_queue.deploy.run_launcher import LAUNCHER_ENV_VAR, SelectedRunLauncher
from cv_queue_tests.conftest import PROJECT_ROOT

SECTION = dagster_instance_config(str(PROJECT_ROOT / "deploy"), "dagster.yaml")[0]["run_launcher"]


def _load(monkeypatch: pytest.MonkeyPatch, choice: str) -> SelectedRunLauncher:
    monkeypatch.setenv(LAUNCHER_ENV_VAR, choice)
    data = ConfigurableClassData(SECTION["module"], SECTION["class"], yaml.safe_dump(SECTION["config"]))
    launcher = data.rehydrate(as_type=RunLauncher)
    assert isinstance(launcher, SelectedRunLauncher)
    return launcher


def test_the_file_names_the_setting():
    assert SECTION["config"]["launcher"] == {"env": LAUNCHER_ENV_VAR}


def test_default_is_dagsters_process_launcher(monkeypatch):
    launcher = _load(monkeypatch, "default")
    assert type(launcher.selected) is dg.DefaultRunLauncher
    assert not launcher.supports_check_run_worker_health and not launcher.supports_resume_run


def test_docker_is_dockerrunlauncher_with_the_files_config(monkeypatch):
    listed = SECTION["config"]["docker"]["env_vars"]
    for name in listed:
        monkeypatch.setenv(name, "set")
    launcher = _load(monkeypatch, "docker")
    docker = launcher.selected
    assert type(docker) is DockerRunLauncher
    assert docker.networks == [SECTION["config"]["docker"]["network"]]
    assert docker.env_vars == listed
    assert docker.container_kwargs == SECTION["config"]["docker"]["container_kwargs"]
    # Run monitoring asks the container runtime about a run's container through the selected launcher.
    assert launcher.supports_check_run_worker_health and launcher.supports_resume_run


def test_anything_else_is_refused_naming_the_setting(monkeypatch):
    with pytest.raises(dg.DagsterInvalidConfigError, match=f"{LAUNCHER_ENV_VAR}.*'k8s'.*default, docker"):
        _load(monkeypatch, "k8s")


def test_every_run_launcher_method_is_passed_through():
    """A method left to RunLauncher's defaults would answer for every launcher alike (no health checks, no resume)."""
    public = {name for name, _ in inspect.getmembers(RunLauncher) if not name.startswith("_")}
    instance_plumbing = {"register_instance", "has_instance"}  # SelectedRunLauncher registers both launchers
    missing = {name for name in public - instance_plumbing if name not in vars(SelectedRunLauncher)}
    assert not missing, f"SelectedRunLauncher does not pass these through: {sorted(missing)}"


def test_unset_optional_variables_are_not_forwarded_so_runs_still_launch(monkeypatch):
    """DockerRunLauncher fails every launch on a listed variable that is unset: a plaintext deployment sets no
    KAFKA_SASL_*, yet the file lists them for the secured one."""
    listed = SECTION["config"]["docker"]["env_vars"]
    unset = {"KAFKA_SASL_PASSWORD", "KAFKA_WORKER_SASL_USERNAME", "CVQ_NAMESPACE"}
    assert unset <= set(listed)
    for name in listed:
        if name in unset:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, "set")
    docker = _load(monkeypatch, "docker").selected
    assert docker.env_vars == [name for name in listed if name not in unset]
    run_env = dict(parse_env_var(entry) for entry in docker.env_vars)  # what each launch does; raises on unset
    assert set(run_env) == set(listed) - unset
