"""deploy/k8s/, checked against what reads it: dagster-k8s's own config schema and Job builder, the Kubernetes API
models, the Redpanda chart's own values schema, and the queue's settings.

No cluster runs here. What is proved: the run launcher the Dagster chart writes from these values is one that
dagster-k8s accepts; a worker run's pod, built by dagster-k8s from that launcher and the tags the fleet sets, has the
resources and grace the settings name; the manifests are valid Kubernetes objects; the Redpanda values pass the
chart's schema; and the topic and instance settings match the rest of the deployment.
"""

import gzip
import json
from pathlib import Path

import jsonschema
import kubernetes
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

from cv_queue.defs.k8s_config import K8S_CONFIG_TAG
from cv_queue.defs.workers import WORKER_JOB, _slot_tags
from cv_queue.kafka.admin.topics import topic_specs
from cv_queue.settings import KafkaConnection, QueueSettings
from cv_queue_tests.conftest import PROJECT_ROOT

K8S = PROJECT_ROOT / "deploy" / "k8s"
SCHEMAS = PROJECT_ROOT / "cv_queue_tests" / "schemas"
NAMESPACE = "cv-queue"
DAGSTER_RELEASE = "dagster"  # the chart's fullname is the release name when it contains "dagster"
IMAGE = "registry.example.com/cv-queue:0.1.0"


def _load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


DAGSTER = _load("dagster-values.yaml")
REDPANDA = _load("redpanda-values.yaml")
ENV = _load("cv-queue-env.yaml")
LAUNCHER_VALUES = DAGSTER["runLauncher"]["config"]["k8sRunLauncher"]
(USER_CODE,) = DAGSTER["dagster-user-deployments"]["deployments"]


def _names(refs: list[dict]) -> list[str]:
    return [ref["name"] for ref in refs]


def chart_run_launcher_config(values: dict) -> dict:
    """The K8sRunLauncher config the Dagster chart writes into the instance from `values` (a transcription of the
    chart's templates/helpers/instance/_run-launcher.tpl, K8sRunLauncher branch, for the keys used here)."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace", NAMESPACE),
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": DAGSTER_RELEASE,
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": f"{DAGSTER_RELEASE}-instance",
        "postgres_password_secret": "dagster-postgresql-secret",
    }
    optional = {"envConfigMaps": ("env_config_maps", _names), "envSecrets": ("env_secrets", _names),
                "envVars": ("env_vars", list), "volumeMounts": ("volume_mounts", list), "volumes": ("volumes", list),
                "labels": ("labels", dict), "resources": ("resources", dict)}
    for key, (target, convert) in optional.items():
        if k8s.get(key):
            config[target] = convert(k8s[key])
    run_config = k8s.get("runK8sConfig") or {}
    sections = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
                "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
                "jobMetadata": "job_metadata"}
    if run_config:
        config["run_k8s_config"] = {sections[k]: v for k, v in run_config.items()}
    return config


@pytest.fixture
def launcher(tmp_path: Path) -> K8sRunLauncher:
    """dagster-k8s's K8sRunLauncher from the values. Outside a cluster it reads a kubeconfig (never contacted)
    instead of the in-cluster one."""
    config = chart_run_launcher_config(DAGSTER)
    result = validate_config(K8sRunLauncher.config_type(), config)
    assert result.success, result.errors
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "none", "user": {"token": "unused"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}]}))
    return K8sRunLauncher(**{**result.value, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})


def _settings_from_env_configmap(monkeypatch: pytest.MonkeyPatch) -> QueueSettings:
    for key, value in ENV["data"].items():
        monkeypatch.setenv(key, str(value))
    return QueueSettings()


def _worker_job(launcher: K8sRunLauncher, run_tags: dict[str, str]) -> kubernetes.client.V1Job:
    """The Job K8sRunLauncher would create for a worker run with these tags (its own steps, without the API call)."""
    run = DagsterRun(job_name=WORKER_JOB, run_id="0" * 36, tags=run_tags)
    context = launcher.get_container_context_for_run(run)
    return construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=IMAGE, run_launcher=launcher), args=["dagster", "api"],
        job_name="dagster-run-0", pod_name="dagster-run-0", component="run_worker",
        user_defined_k8s_config=context.run_k8s_config, labels={})


def test_the_run_launcher_section_passes_dagster_k8s_config_schema():
    config = chart_run_launcher_config(DAGSTER)
    assert DAGSTER["runLauncher"]["type"] == "K8sRunLauncher"
    result = validate_config(K8sRunLauncher.config_type(), config)
    assert result.success, result.errors
    # The schema is strict: a misspelt key in the values would fail here.
    assert not validate_config(K8sRunLauncher.config_type(), {**config, "env_secret": ["x"]}).success


def test_worker_run_tags_parse_with_dagster_k8s_and_carry_the_settings(monkeypatch):
    settings = _settings_from_env_configmap(monkeypatch)
    tags = _slot_tags(settings.slots()[0].name)
    parsed = get_user_defined_k8s_config(tags)  # dagster-k8s's own parser: raises on an invalid tag
    assert parsed.container_config["resources"] == {
        "requests": {"cpu": ENV["data"]["CVQ_K8S__WORKER_CPU_REQUEST"],
                     "memory": ENV["data"]["CVQ_K8S__WORKER_MEMORY_REQUEST"]},
        "limits": {"memory": ENV["data"]["CVQ_K8S__WORKER_MEMORY_LIMIT"]}}
    assert parsed.pod_spec_config["termination_grace_period_seconds"] == int(
        ENV["data"]["CVQ_K8S__WORKER_TERMINATION_GRACE_S"])
    assert json.loads(tags[K8S_CONFIG_TAG])  # the tag value is JSON, as the launcher reads it


def test_a_worker_pod_built_by_dagster_k8s_has_the_worker_resources_and_the_kafka_environment(launcher,
                                                                                              monkeypatch):
    settings = _settings_from_env_configmap(monkeypatch)
    job = _worker_job(launcher, _slot_tags(settings.slots()[0].name))
    pod = job.spec.template.spec
    (container,) = pod.containers
    k8s = settings.k8s
    assert container.resources.requests == {"cpu": k8s.worker_cpu_request, "memory": k8s.worker_memory_request}
    assert container.resources.limits == {"memory": k8s.worker_memory_limit}
    # The run's default resources (the launcher's) were replaced for the worker, not mixed with them.
    assert container.resources.requests != LAUNCHER_VALUES["resources"]["requests"]
    assert pod.termination_grace_period_seconds == k8s.worker_termination_grace_s
    sources = {(s.config_map_ref.name if s.config_map_ref else None, s.secret_ref.name if s.secret_ref else None)
               for s in container.env_from}
    assert {("cv-queue-env", None), (None, "cv-queue-kafka")} <= sources
    ca_mount = next(m for m in container.volume_mounts if m.name == "kafka-ca")
    assert Path(ENV["data"]["KAFKA_SSL_CA_LOCATION"]).parent == Path(ca_mount.mount_path)
    assert job.spec.ttl_seconds_after_finished == LAUNCHER_VALUES["runK8sConfig"]["jobSpecConfig"][
        "ttlSecondsAfterFinished"]
    # The label the clean-up command of docs/07-deployment.md selects run Jobs by.
    assert job.metadata.labels["app.kubernetes.io/part-of"] == LAUNCHER_VALUES["labels"]["app.kubernetes.io/part-of"]


def test_a_run_without_the_tag_gets_the_launchers_default_resources(launcher):
    job = _worker_job(launcher, {})
    (container,) = job.spec.template.spec.containers
    assert container.resources.requests == LAUNCHER_VALUES["resources"]["requests"]


def _k8s(model: type, manifest: dict) -> object:
    """Strict: dagster-k8s's converter raises on any key the Kubernetes model does not have."""
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, manifest))


def test_manifests_are_valid_kubernetes_objects():
    models = {"Job": kubernetes.client.V1Job, "ConfigMap": kubernetes.client.V1ConfigMap,
              "Secret": kubernetes.client.V1Secret}
    for path in sorted([*K8S.glob("*.yaml"), *K8S.glob("*.yaml.example")]):
        manifest = yaml.safe_load(path.read_text())
        if "kind" not in manifest:
            continue  # Helm values
        _k8s(models[manifest["kind"]], manifest)
        assert manifest["metadata"]["namespace"] == NAMESPACE, path.name
    with pytest.raises(Exception, match="Unexpected keys"):
        _k8s(kubernetes.client.V1Job, {"spec": {"backofLimit": 1}})


def test_kubectl_apply_of_the_folder_applies_no_example_secret():
    """`kubectl apply -f deploy/k8s/` reads .yaml, .yml and .json files: the example Secret, with its placeholder
    passwords, must not be one of them; the real Secret comes from the operator's secret store."""
    applied = [p for p in K8S.iterdir() if p.suffix in {".yaml", ".yml", ".json"}]
    kinds = {p.name: (yaml.safe_load(p.read_text()) or {}).get("kind") for p in applied}
    assert "Secret" not in kinds.values(), kinds
    example = yaml.safe_load((K8S / "cv-queue-kafka.yaml.example").read_text())
    assert example["kind"] == "Secret"
    assert _names(USER_CODE["envSecrets"]) == _names(LAUNCHER_VALUES["envSecrets"]) == [example["metadata"]["name"]]
    from cv_queue.defs.resources import SASL_ENV

    assert set(example["stringData"]) == {name for pair in SASL_ENV.values() for name in pair}


def test_the_chart_values_kubernetes_fields_are_valid_kubernetes_objects():
    for section in (USER_CODE, LAUNCHER_VALUES):
        for volume in section["volumes"]:
            _k8s(kubernetes.client.V1Volume, volume)
        for mount in section["volumeMounts"]:
            _k8s(kubernetes.client.V1VolumeMount, mount)
        _k8s(kubernetes.client.V1ResourceRequirements, section["resources"])
    assert _names(USER_CODE["envConfigMaps"]) == [ENV["metadata"]["name"]]
    assert USER_CODE["includeConfigInLaunchedRuns"]["enabled"] is True


def test_the_provisioning_job_materializes_the_topic_assets_like_compose_does():
    job = _load("provision-topics-job.yaml")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    assert container["command"] == compose["services"]["provision"]["command"]
    assert container["image"] == f"{USER_CODE['image']['repository']}:{USER_CODE['image']['tag']}" == IMAGE
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dagster-instance"]["configMap"]["name"] == chart_run_launcher_config(DAGSTER)[
        "instance_config_map"]
    password = next(e for e in container["env"] if e["name"] == "DAGSTER_PG_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == chart_run_launcher_config(DAGSTER)[
        "postgres_password_secret"]
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {
        "cv-queue-env", "cv-queue-kafka"}


def test_every_variable_of_the_env_configmap_is_a_setting_the_code_reads(monkeypatch):
    settings = _settings_from_env_configmap(monkeypatch)
    conn = KafkaConnection()
    data = ENV["data"]
    assert conn.bootstrap_servers == data["KAFKA_BOOTSTRAP_SERVERS"]
    assert conn.security_protocol == data["KAFKA_SECURITY_PROTOCOL"]
    assert conn.ssl_ca_location == data["KAFKA_SSL_CA_LOCATION"]
    for key in [k for k in data if k.startswith("CVQ_")]:
        section, _, field = key.removeprefix("CVQ_").lower().partition("__")
        assert section in QueueSettings.model_fields, key
        if field:
            assert field in QueueSettings.model_fields[section].annotation.model_fields, key
    assert settings.topics.partitions == int(data["CVQ_TOPICS__PARTITIONS"])


def test_run_pods_get_every_setting_and_secrets_only_from_the_secret():
    """Kubernetes forwards no list: every cv-queue pod (code server, each run, the provisioning Job) gets the whole
    ConfigMap and Secret through envFrom, so any setting an operator adds there reaches the runs. What is checked:
    both carry only variables the settings read (cv_queue.deploy.settings_env), and the ConfigMap no secret."""
    from cv_queue.deploy.settings_env import run_env_vars, secret_env_vars

    secret = yaml.safe_load((K8S / "cv-queue-kafka.yaml.example").read_text())
    for source in (ENV["data"], secret["stringData"]):
        unread = set(source) - set(run_env_vars())
        assert not unread, f"no cv-queue process reads {sorted(unread)}"
    assert not set(ENV["data"]) & set(secret_env_vars()), "a secret belongs in the Secret, not the ConfigMap"
    for section in (USER_CODE, LAUNCHER_VALUES):
        assert _names(section["envConfigMaps"]) == [ENV["metadata"]["name"]]
        assert _names(section["envSecrets"]) == [secret["metadata"]["name"]]
        assert "envVars" not in section, "a fixed variable list would drop the settings it does not name"


def test_redpanda_values_pass_the_charts_own_schema():
    """Helm validates the chart's defaults merged with these values against values.schema.json (both vendored from
    redpanda-data/redpanda-operator, charts/redpanda/chart, chart 26.2.1, Apache-2.0)."""
    schema = json.loads(gzip.decompress((SCHEMAS / "redpanda-chart-26.2.1.values.schema.json.gz").read_bytes()))
    defaults = yaml.safe_load(gzip.decompress((SCHEMAS / "redpanda-chart-26.2.1.values.yaml.gz").read_bytes()))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(_helm_merge(defaults, REDPANDA))]
    assert not errors, errors
    assert not validator.is_valid(_helm_merge(defaults, {**REDPANDA, "statefulset": {"replica": 3}}))


def _helm_merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of user values into chart defaults: maps merge, anything else replaces, null deletes."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_redpanda_has_the_cluster_settings_the_topic_assets_expect(monkeypatch):
    settings = _settings_from_env_configmap(monkeypatch)
    cluster = REDPANDA["config"]["cluster"]
    assert cluster["auto_create_topics_enabled"] is False
    assert cluster["enable_transactions"] is True and cluster["enable_idempotence"] is True
    brokers = REDPANDA["statefulset"]["replicas"]
    for spec in topic_specs(settings):
        assert spec.replication_factor <= brokers, spec.name
        assert spec.replication_factor % 2 == 1, f"{spec.name}: Redpanda wants an odd replication factor"
    assert cluster["default_topic_replications"] == settings.topics.replication_factor
    # Clients reach the internal listener of release `redpanda` with TLS and SCRAM, as the chart serves it.
    assert ENV["data"]["KAFKA_BOOTSTRAP_SERVERS"] == f"redpanda.{NAMESPACE}.svc.cluster.local:9093"
    assert REDPANDA["tls"]["enabled"] and ENV["data"]["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert REDPANDA["auth"]["sasl"]["mechanism"] == ENV["data"]["KAFKA_SASL_MECHANISM"]


def test_the_chart_instance_settings_mirror_the_production_instance_file():
    production, _ = dagster_instance_config(str(PROJECT_ROOT / "deploy"), "dagster.yaml")
    daemon = DAGSTER["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    runs = production["concurrency"]["runs"]
    assert queued["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    assert queued["dequeueIntervalSeconds"] == production["run_coordinator"]["config"]["dequeue_interval_seconds"]
    monitoring = production["run_monitoring"]
    assert daemon["runMonitoring"]["enabled"] is monitoring["enabled"] is True
    assert daemon["runMonitoring"]["maxResumeRunAttempts"] == monitoring["max_resume_run_attempts"]
    assert DAGSTER["pythonLogs"]["managedPythonLoggers"] == production["python_logs"]["managed_python_loggers"]
    assert DAGSTER["retention"]["sensor"]["purgeAfterDays"] == production["retention"]["sensor"]["purge_after_days"]
    assert DAGSTER["retention"]["schedule"]["purgeAfterDays"] == production["retention"]["schedule"][
        "purge_after_days"]
    assert DAGSTER["telemetry"]["enabled"] is production["telemetry"]["enabled"]


def chart_postgres_storage(values: dict) -> dict:
    """The postgres_db storage config the Dagster chart writes into the instance from `values` (a transcription of
    the chart's templates/helpers/instance/_postgresql.tpl: `scheme` only when postgresql.postgresqlScheme is set)."""
    pg = values["postgresql"]
    config = {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
              "hostname": pg.get("postgresqlHost") or f"{DAGSTER_RELEASE}-postgresql",
              "db_name": pg["postgresqlDatabase"], "port": pg.get("service", {}).get("port", 5432),
              "params": pg.get("postgresqlParams", {})}
    if pg.get("postgresqlScheme"):
        config["scheme"] = pg["postgresqlScheme"]
    return {"postgres_db": config}


def test_the_charts_postgres_storage_opens_with_the_installed_driver():
    """Without a scheme dagster-postgres says `postgresql://`, for which SQLAlchemy 2.1 loads psycopg 3: not
    installed, so every pod that opens the storage would fail. The chart's scheme is the production file's."""
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config
    from sqlalchemy.engine import make_url

    chart = chart_postgres_storage(DAGSTER)
    assert validate_config(DagsterPostgresStorage.config_type(), chart).success
    production, _ = dagster_instance_config(str(PROJECT_ROOT / "deploy"), "dagster.yaml")
    assert chart["postgres_db"].get("scheme") == production["storage"]["postgres"]["postgres_db"]["scheme"]
    url = pg_url_from_config({"postgres_db": {**chart["postgres_db"], "password": "unused"}})
    make_url(url).get_dialect().import_dbapi()  # ModuleNotFoundError for a driver the image does not have
