"""The production instance's run launcher, chosen by one setting so that one instance file serves every host.

`deploy/dagster.yaml` names `SelectedRunLauncher`; its `launcher` field (the CVQ_RUN_LAUNCHER environment variable
there) picks what launches runs:
- `default`: Dagster's DefaultRunLauncher, each run a process of the gRPC code server (a host without Docker; the
  production-instance test);
- `docker`: dagster-docker's DockerRunLauncher, each run a container, configured by the file's `docker` section.
Every RunLauncher method is passed through, so run monitoring, termination and resumption behave exactly as the chosen
launcher's own. Kubernetes does not use this file: the Helm chart writes its own instance with K8sRunLauncher.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any, Self

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, ResumeRunContext, RunLauncher
from dagster._serdes import ConfigurableClass, ConfigurableClassData

LAUNCHER_ENV_VAR = "CVQ_RUN_LAUNCHER"
DEFAULT, DOCKER = "default", "docker"
CHOICES = (DEFAULT, DOCKER)


def forwarded_env_vars(entries: Sequence[str]) -> list[str]:
    """The `env_vars` entries to pass on: `NAME=value` ones, and bare names set in this process. DockerRunLauncher
    raises at every launch on a bare name that is unset, so the file can list the optional ones (SASL, namespace)
    that only some deployments set."""
    return [entry for entry in entries if "=" in entry or entry in os.environ]


def build_launcher(choice: str, docker_config: Mapping[str, Any] | None) -> RunLauncher:
    """The launcher `choice` names, or a clear error naming the setting and what it accepts."""
    if choice == DEFAULT:
        return dg.DefaultRunLauncher()
    if choice == DOCKER:
        from dagster_docker import DockerRunLauncher  # imports the Docker SDK: only where runs are containers

        config = dict(docker_config or {})
        if config.get("env_vars"):
            config["env_vars"] = forwarded_env_vars(config["env_vars"])
        return DockerRunLauncher(**config)
    raise dg.DagsterInvalidConfigError(
        f"run_launcher.config.launcher ({LAUNCHER_ENV_VAR} in deploy/dagster.yaml) is {choice!r}; it must be one "
        f"of {', '.join(CHOICES)}", [], choice)


class SelectedRunLauncher(RunLauncher, ConfigurableClass):
    """Delegates every call to the launcher its `launcher` setting selects (see the module docstring)."""

    def __init__(self, launcher: str, docker: Mapping[str, Any] | None = None,
                 inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        self.choice = launcher
        self.selected = build_launcher(launcher, docker)
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        from dagster_docker.utils import DOCKER_CONFIG_SCHEMA  # the schema only: no Docker SDK client is made

        return {
            "launcher": dg.Field(dg.StringSource, description=f"Which launcher runs runs: {', '.join(CHOICES)}."),
            "docker": dg.Field(DOCKER_CONFIG_SCHEMA, is_required=False,
                               description="DockerRunLauncher's own config, used when launcher is docker."),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(launcher=config_value["launcher"], docker=config_value.get("docker"), inst_data=inst_data)

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        super().register_instance(instance)
        self.selected.register_instance(instance)  # the launchers reach runs and storage through the instance

    def launch_run(self, context: LaunchRunContext) -> None:
        self.selected.launch_run(context)

    def terminate(self, run_id: str) -> bool:
        return self.selected.terminate(run_id)

    def dispose(self) -> None:
        self.selected.dispose()

    def join(self, timeout: int = 30) -> None:
        self.selected.join(timeout)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return self.selected.supports_check_run_worker_health

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        return self.selected.check_run_worker_health(run)

    def get_run_worker_debug_info(self, run: dg.DagsterRun, include_container_logs: bool | None = True) -> str | None:
        return self.selected.get_run_worker_debug_info(run, include_container_logs)

    @property
    def supports_resume_run(self) -> bool:
        return self.selected.supports_resume_run

    def resume_run(self, context: ResumeRunContext) -> None:
        self.selected.resume_run(context)
