"""Item 5 of issue 15 in Airflow: the task log says which objects the dispatcher copied to
the cluster running the task, by name (``dag.test()`` against a dispatcher on the stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.airflow.conftest import TEST_DAGS, DagRunner, succeed
from tests.stack import Stack

#: Depends on the cncf provider (the DAG's model objects).
pytestmark = pytest.mark.generation


def test_the_task_log_says_which_objects_were_copied_to_which_cluster(
    airflow_db: Path, stack: Stack, namespace: str, service_factory: Any, tmp_path: Path
) -> None:
    with stack.kube("plane") as kube:
        client.CoreV1Api(kube).create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": "plane-only-registry"},
                "stringData": {".dockerconfigjson": "{}"},
            },
        )
    copies = {"copy_dependencies": {"from_plane": {"secrets": ["plane-only-*"]}}}
    service = service_factory(clusters={"gpu-a100": copies})
    runner = DagRunner(service, tmp_path)
    try:
        run = runner.run(
            TEST_DAGS / "plane_secret.py", "plane_secret", annotate={"train": succeed("2s")}
        )
    finally:
        service.stop(timeout=2)
    assert run.state == "success", run.log
    [placed] = run.lines("dispatched to cluster")
    assert "dispatched to cluster gpu-a100" in placed, placed
    [copied] = run.lines("Materialised in cluster gpu-a100 before the pod: ")
    assert (
        f"Secret plane-only-registry copied to gpu-a100/{namespace} "
        f"from plane/{namespace}/plane-only-registry"
    ) in copied, copied
