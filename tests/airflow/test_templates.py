"""Templates render where KubernetesPodOperator renders them, Kubernetes model objects
included: ``dag.test()`` with the real Airflow, a dispatcher process on the test stack,
and the pod read back from the cluster it went to."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from tests.airflow.conftest import TEST_DAGS, DagRunner, succeed
from tests.airflow.test_task_lifecycle import CLUSTERS
from tests.stack import Stack

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

LOGICAL_DATE = datetime(2024, 6, 1, 3, 0, tzinfo=UTC)


def pod_of(stack: Stack, namespace: str, task_id: str, *selector: str) -> Any:
    """The one pod of ``task_id`` (and the other label ``selector``s) on any cluster."""
    found = []
    for cluster in CLUSTERS:
        with stack.kube(cluster) as kube:
            pods = client.CoreV1Api(kube).list_namespaced_pod(
                namespace, label_selector=",".join([f"task_id={task_id}", *selector])
            )
            found += [pod.to_dict() for pod in pods.items]
    assert len(found) == 1, found
    return found[0]


def test_templates_inside_kubernetes_models_reach_the_pod_rendered(
    dag_runner: DagRunner, stack: Stack, namespace: str
) -> None:
    run = dag_runner.run(
        TEST_DAGS / "templated_models.py",
        "templated_models",
        annotate={"render": succeed("1s"), "bad_limit": succeed("1s")},
        logical_date=LOGICAL_DATE,
    )
    assert run.task("render")["state"] == "success", run.log
    pod = pod_of(stack, namespace, "render")
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] or []}
    assert env["PARTITION"] == "2024-06-01"
    assert env["RUN"] == "templated_models-20240601"
    assert container["args"] == ["--date", "2024-06-01"]
    assert container["resources"]["limits"]["memory"] == "3Gi"
    assert container["resources"]["requests"] == {"cpu": "1500m", "memory": "3Gi"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["scratch-space"]["empty_dir"]["size_limit"] == "3Gi"
    mounts = {m["name"]: m for m in container["volume_mounts"]}
    assert mounts["scratch-space"]["sub_path"] == "20240601"
    assert mounts["scratch-space"]["mount_path"] == "/scratch"
    assert pod["metadata"]["labels"]["partition"] == "20240601"
    assert pod["spec"]["hostname"] == "loader-20240601"
    assert container["env_from"] == [
        {"config_map_ref": {"name": "loader-config", "optional": None}, "prefix": None,
         "secret_ref": None}
    ]  # fmt: skip

    # A rendered value the dispatcher would refuse fails the task when it runs, saying
    # which field, and no pod is made.
    assert run.task("bad_limit")["state"] == "failed", run.log
    assert "container_resources.limits.memory: not a Kubernetes quantity: 'lots'" in run.log
    assert run.task("bad_limit")["try_number"] == 1
