"""The operator authenticates as an Airflow worker does in production: with a
ServiceAccount token of the in-plane cluster for the dispatcher's audience, read from a
file (a projected token; here minted by the same TokenRequest API the kubelet uses), and
its job belongs to the tenant that lists the worker's ServiceAccount."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from kubernetes import client

from dispatcher.dispatching.records import GROUP, PLURAL, VERSION
from tests.airflow.conftest import DagRunner, succeed
from tests.stack import Stack
from tests.stack.dispatcher_config import AUDIENCE
from tests.support import wait_until

DAG = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import DAG

    from dispatcher.airflow import DispatcherPodOperator

    with DAG(dag_id="as_a_worker", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        DispatcherPodOperator(task_id="hello", image="busybox:1.36", cmds=["true"])
    """
)


def test_the_operator_authenticates_with_its_workers_service_account_token(
    airflow_db: Path, service_factory: Any, stack: Stack, namespace: str, tmp_path: Path
) -> None:
    with stack.kube("plane") as kube:
        client.CoreV1Api(kube).create_namespaced_service_account(
            namespace, {"metadata": {"name": "airflow-worker"}}
        )
    service = service_factory(tenants={"data": {"callers": [f"{namespace}/airflow-worker"]}})
    token_file = tmp_path / "token"
    token_file.write_text(
        stack.service_account_token(
            "plane", namespace, "airflow-worker", seconds=3600, audiences=[AUDIENCE]
        )
    )
    os.chmod(token_file, 0o600)
    dag_file = tmp_path / "as_a_worker.py"
    dag_file.write_text(DAG)

    runner = DagRunner(service, tmp_path, auth={"extra": {"token_file": str(token_file)}})
    worker, log = runner.start(dag_file, "as_a_worker", annotate={"hello": succeed("2s")})
    try:
        # The job record in plane (read with an admin client, not the dispatcher's word)
        # names the tenant whose caller the worker's ServiceAccount is.
        wait_until(
            lambda: _records(stack, namespace) or worker.poll() is not None,
            timeout=120,
            what="the job record (or the worker's end)",
        )
        records = _records(stack, namespace)
        worker.wait(timeout=240)
    finally:
        worker.kill()
    run = DagRunner._result(worker.returncode, log.read_text(), "as_a_worker")
    assert run.task("hello")["state"] == "success", run.log
    assert [r["spec"]["tenant"] for r in records] == ["data"]
    assert token_file.read_text() not in run.log


def _records(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    with stack.kube("plane") as kube:
        listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )
    return list(listed["items"])
