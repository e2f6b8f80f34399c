"""The `dagster-k8s/config` tag of worker runs: per-run CPU, memory and termination grace on Kubernetes.

K8sRunLauncher reads this tag from each run and merges it into the run's Job and pod; other launchers ignore it.
The numbers are settings (`CVQ_K8S__*`), read where the tag is built: in the code server that evaluates the fleet
sensor and the slot partitions.
"""

import json

from cv_queue.settings import K8sSettings

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY, without importing dagster-k8s


def worker_pod_config(k8s: K8sSettings) -> dict:
    """The tag's value for a worker run, in dagster-k8s's snake_case form (container_config, pod_spec_config)."""
    requests = {"cpu": k8s.worker_cpu_request, "memory": k8s.worker_memory_request}
    limits = {"cpu": k8s.worker_cpu_limit, "memory": k8s.worker_memory_limit}
    resources = {"requests": {k: v for k, v in requests.items() if v},
                 "limits": {k: v for k, v in limits.items() if v}}
    return {
        "container_config": {"resources": {k: v for k, v in resources.items() if v}},
        # Run termination deletes the Job: the worker gets SIGTERM and this long to commit before SIGKILL.
        "pod_spec_config": {"termination_grace_period_seconds": k8s.worker_termination_grace_s},
    }


def worker_pod_tag(k8s: K8sSettings) -> dict[str, str]:
    return {K8S_CONFIG_TAG: json.dumps(worker_pod_config(k8s), sort_keys=True)}
