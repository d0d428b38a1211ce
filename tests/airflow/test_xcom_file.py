"""KubernetesPodOperator's XCom contract across clusters: a container that writes
``/airflow/xcom/return.json`` (256 KiB here, far beyond a termination message's 4 KiB) has
its value pushed, and a downstream task reads it. ``dag.test()`` with the real Airflow, a
dispatcher process and the test stack.

KWOK runs no container, so the test plays the two programs the pod would run, for real,
on this machine: the task's own command writes return.json into a directory, and the XCom
sidecar's script (``dispatcher.core.xcom.sidecar_command``, the very command the pod
carries) is stopped with SIGTERM as the kubelet would stop it and prints the file. Its
output goes into the cluster's simulated container log; the dispatcher reads it from
there through the cluster's ``pods/log`` API, as it would read the real sidecar's.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from dispatcher.core.xcom import READY, XCOM_SIDECAR_NAME, sidecar_command
from tests.airflow.conftest import SIM, TEST_DAGS, DagRunner
from tests.stack import Stack

DAG_FILE = TEST_DAGS / "kpo_xcom.py"


def running_job(dag_runner: DagRunner, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """The dispatcher's job for ``task_id``, once its pod runs."""
    deadline = time.monotonic() + timeout
    with dag_runner.service.client() as api:
        while time.monotonic() < deadline:
            for job in api.jobs(state="running"):
                if (job["pod"] or "").startswith(f"{task_id}-"):
                    return job
            time.sleep(0.2)
    raise AssertionError(f"no running job for {task_id} within {timeout:.0f}s")


def run_in_pod(command: list[str], xcom_dir: Path) -> None:
    """The task container's own command, with /airflow/xcom mapped to ``xcom_dir``."""
    program = command[-1].replace("/airflow/xcom", str(xcom_dir))
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)  # noqa: S603


def sidecar_output(pod: str, xcom_dir: Path) -> list[str]:
    """What the XCom sidecar prints when the kubelet stops it after the task container."""
    sidecar = subprocess.Popen(  # noqa: S603 - our own script
        sidecar_command(pod, str(xcom_dir)), stdout=subprocess.PIPE, text=True
    )
    assert sidecar.stdout is not None
    ready = sidecar.stdout.readline()  # its trap is set
    assert ready.split() == [READY, pod], ready
    sidecar.send_signal(signal.SIGTERM)
    out, _ = sidecar.communicate(timeout=30)
    assert sidecar.returncode == 0
    return [ready.rstrip("\n"), *out.splitlines()]


def test_return_json_of_256_kib_reaches_the_downstream_task(
    dag_runner: DagRunner, stack: Stack, tmp_path: Path
) -> None:
    proc, log = dag_runner.start(DAG_FILE, "kpo_xcom")
    try:
        job = running_job(dag_runner, "produce")
        _hand_over(stack, job, tmp_path)
        assert proc.wait(timeout=240) == 0, log.read_text()
    finally:
        proc.kill()
    run = DagRunner._result(proc.returncode, log.read_text(), "kpo_xcom")
    assert run.state == "success", run.log
    written = json.loads((tmp_path / "return.json").read_text())
    assert run.xcom("produce") == written
    canonical = json.dumps(written, sort_keys=True).encode()
    assert run.xcom("consume") == {
        "rows": 1200,
        "sha256": hashlib.sha256(canonical).hexdigest(),
    }


def _hand_over(stack: Stack, job: dict[str, Any], tmp_path: Path) -> None:
    """Play the pod: check its XCom wiring, run its programs, let it succeed."""
    cluster, namespace, pod = job["cluster"], job["namespace"], job["pod"]
    with stack.kube(cluster) as kube:
        manifest = client.CoreV1Api(kube).read_namespaced_pod(pod, namespace).to_dict()
    # The pod carries KPO's contract: an emptyDir at /airflow/xcom, a native sidecar.
    (sidecar,) = manifest["spec"]["init_containers"]
    assert sidecar["name"] == XCOM_SIDECAR_NAME
    assert sidecar["restart_policy"] == "Always"
    assert sidecar["command"] == sidecar_command(pod)
    base = manifest["spec"]["containers"][0]
    mounts = {(m["name"], m["mount_path"]) for m in base["volume_mounts"]}
    assert ("kube-dispatcher-xcom", "/airflow/xcom") in mounts

    run_in_pod(base["command"] + base["args"], tmp_path)
    assert (tmp_path / "return.json").stat().st_size > 256 * 1024
    stack.append_container_log(cluster, sidecar_output(pod, tmp_path))
    # The task container ends: the pod succeeds (KWOK's stage, on this annotation).
    with stack.kube(cluster) as kube:
        client.CoreV1Api(kube).patch_namespaced_pod(
            pod, namespace, {"metadata": {"annotations": {f"{SIM}succeed-after": "1s"}}}
        )
