"""A pod template file carries over: the DAG names ``pod_templates/gpu.yaml`` next to it,
sets a few parameters of its own, and the pod the dispatcher creates (read from the
cluster's apiserver by an admin client) has the template's fields with the parameters
over them. ``dag.test()`` with the real Airflow, a dispatcher process and the stack."""

from __future__ import annotations

import shutil

import pytest
from kubernetes import client

from tests.airflow.conftest import DAGS_FOLDER, TEST_DAGS, DagRunner, succeed
from tests.stack import Stack

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation


def test_a_pod_template_file_next_to_the_dag_shapes_the_pod(
    dag_runner: DagRunner, stack: Stack, namespace: str
) -> None:
    shutil.copytree(TEST_DAGS / "pod_templates", DAGS_FOLDER / "pod_templates", dirs_exist_ok=True)
    run = dag_runner.run(
        TEST_DAGS / "kpo_pod_template.py", "kpo_pod_template", annotate={"train": succeed("2s")}
    )
    assert run.state == "success", run.log
    assert run.lines("dispatched to cluster gpu-a100"), run.log
    with stack.kube("gpu-a100") as kube:
        [pod] = (
            client.CoreV1Api(kube)
            .list_namespaced_pod(namespace, label_selector="dag_id=kpo_pod_template")
            .items
        )
    assert pod.metadata.name.startswith("gpu-template-")  # the template's name
    [container] = [c for c in pod.spec.containers if c.name == "base"]
    # From the template: the image, a volume and its mount, the toleration, the GPU
    # limit, an environment variable, a label and an annotation.
    assert container.image == "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04"
    assert [(m.name, m.mount_path) for m in container.volume_mounts or [] if m.name == "shm"] == [
        ("shm", "/dev/shm")
    ]
    [shm] = [v for v in pod.spec.volumes if v.name == "shm"]
    assert shm.empty_dir.medium == "Memory"
    assert any(t.key == "nvidia.com/gpu" and t.operator == "Exists" for t in pod.spec.tolerations)
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert pod.metadata.labels["team"] == "ml"
    assert pod.metadata.annotations["example.com/owner"] == "ml-platform"
    # From the operator, over the template: the command, a rendered variable after the
    # template's, a label, and the task's identity labels.
    assert container.command == ["python", "-m", "train"]
    env = [(e.name, e.value) for e in container.env or [] if e.name in ("FROM_TEMPLATE", "DAY")]
    assert env[0] == ("FROM_TEMPLATE", "yes")
    assert env[1][0] == "DAY"
    assert env[1][1].startswith("20"), env  # {{ ds }} rendered
    assert pod.metadata.labels["run"] == "nightly"
    assert pod.metadata.labels["dag_id"] == "kpo_pod_template"
