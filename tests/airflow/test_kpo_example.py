"""A DAG in the style of the provider's KubernetesPodOperator examples
(``dags/kpo_example.py``) runs with only its two imports changed: every task succeeds,
``return.json`` reaches the downstream task, the deferred task's log is in the task log
once and in order, and the pods the dispatcher created (seen by an admin watch on each
cluster, not by the dispatcher's account) carry what the DAG asked for: secrets as
variables and as a volume, the ConfigMap, the claim, the init container, tolerations,
affinity and ports.

``dag.test()`` with the real Airflow, a dispatcher process and the stack; runs with the
cncf provider installed (``make test-provider``) and without it (the whole suite of
``make test``): once the
imports are changed the DAG needs only this package."""

from __future__ import annotations

import difflib
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from tests.airflow.conftest import DAGS_FOLDER, SIM, TEST_DAGS, DagRunner, succeed
from tests.airflow.test_example_dags import assert_once_in_order, pod_lines
from tests.airflow.test_xcom_file import running_job, sidecar_output
from tests.stack import Stack

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

CLUSTERS = ("plane", "gpu-a100", "gpu-h100")
IMPORTS = {
    "from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator": (
        "from dispatcher.airflow import DispatcherPodOperator as KubernetesPodOperator"
    ),
    "from airflow.providers.cncf.kubernetes.secret import Secret": (
        "from dispatcher.airflow import Secret"
    ),
}


def moved_dag() -> Path:
    """The example DAG with its imports changed, and nothing else."""
    original = (TEST_DAGS / "kpo_example.py").read_text()
    moved = original
    for before, after in IMPORTS.items():
        moved = moved.replace(before, after)
    changed = [
        line
        for line in difflib.unified_diff(original.splitlines(), moved.splitlines(), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert len(changed) == 4, changed  # two imports out, two in
    path = DAGS_FOLDER.parent / "kpo_example_moved.py"
    path.write_text(moved)
    return path


@contextmanager
def pods_seen(stack: Stack, namespace: str) -> Iterator[dict[str, dict[str, Any]]]:
    """Every pod created in ``namespace`` on any cluster while the block runs, as an
    admin watch first saw it (``cluster/name`` -> manifest)."""
    seen: dict[str, dict[str, Any]] = {}
    stop = threading.Event()
    ready = threading.Barrier(len(CLUSTERS) + 1)

    def follow(cluster: str) -> None:
        with stack.kube(cluster) as kube:
            core = client.CoreV1Api(kube)
            version = core.list_namespaced_pod(namespace).metadata.resource_version
            ready.wait()
            while not stop.is_set():
                for event in watch.Watch().stream(
                    core.list_namespaced_pod,
                    namespace,
                    resource_version=version,
                    timeout_seconds=2,
                ):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    seen.setdefault(f"{cluster}/{pod.metadata.name}", pod.to_dict())

    threads = [threading.Thread(target=follow, args=(c,), daemon=True) for c in CLUSTERS]
    for thread in threads:
        thread.start()
    ready.wait()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def play_the_xcom_pod(stack: Stack, job: dict[str, Any], workdir: Path) -> None:
    """What the pod would do: its shell command writes return.json (to ``workdir`` for
    /airflow/xcom), the XCom sidecar prints it when stopped, the container ends."""
    cluster, namespace, name = job["cluster"], job["namespace"], job["pod"]
    with stack.kube(cluster) as kube:
        pod = client.CoreV1Api(kube).read_namespaced_pod(name, namespace)
    [base] = [c for c in pod.spec.containers if c.name == "base"]
    assert base.command[:2] == ["sh", "-c"], base.command
    program = base.command[2].replace("/airflow/xcom", str(workdir))
    subprocess.run(["sh", "-c", program], check=True, timeout=60)  # noqa: S603, S607
    stack.append_container_log(cluster, sidecar_output(name, workdir))
    with stack.kube(cluster) as kube:
        client.CoreV1Api(kube).patch_namespaced_pod(
            name, namespace, {"metadata": {"annotations": {f"{SIM}succeed-after": "1s"}}}
        )


@pytest.fixture
def claim(stack: Stack, namespace: str) -> Iterator[str]:
    """The DAG's claim ``test-volume`` in ``namespace`` on every cluster, bound to a volume
    of its own. No controller manager runs in the stack, so the binding is written as the
    PV controller would write it (volumeName, bind-completed, both phases Bound): the
    scheduler then places the pod as it would with a real bound claim."""
    volume = f"{namespace}-test-volume"
    for cluster in CLUSTERS:
        with stack.kube(cluster) as kube:
            core = client.CoreV1Api(kube)
            core.create_persistent_volume(
                {
                    "metadata": {"name": volume},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": "/tmp/kd-test-volume"},
                        "storageClassName": "",
                        "claimRef": {"namespace": namespace, "name": "test-volume"},
                    },
                }
            )
            core.create_namespaced_persistent_volume_claim(
                namespace,
                {
                    "metadata": {
                        "name": "test-volume",
                        "annotations": {"pv.kubernetes.io/bind-completed": "yes"},
                    },
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                        "storageClassName": "",
                        "volumeName": volume,
                    },
                },
            )
            core.patch_persistent_volume_status(volume, {"status": {"phase": "Bound"}})
            core.patch_namespaced_persistent_volume_claim_status(
                "test-volume", namespace, {"status": {"phase": "Bound"}}
            )
    yield volume
    for cluster in CLUSTERS:
        with stack.kube(cluster) as kube:
            client.CoreV1Api(kube).delete_persistent_volume(volume)


def by_task(seen: dict[str, dict[str, Any]], task_id: str) -> dict[str, Any]:
    [pod] = [p for p in seen.values() if p["metadata"]["labels"].get("task_id") == task_id]
    return pod


def test_a_kpo_example_dag_runs_with_only_its_imports_changed(
    dag_runner: DagRunner,
    stack: Stack,
    namespace: str,
    claim: str,
    tmp_path: Path,
) -> None:
    dag_file = moved_dag()
    annotate = {"task": succeed("2s"), "deferred_logs": succeed("3s")}
    with pods_seen(stack, namespace) as seen:
        proc, log = dag_runner.start(dag_file, "kpo_example", annotate=annotate)
        try:
            play_the_xcom_pod(stack, running_job(dag_runner, "write-xcom"), tmp_path)
            assert proc.wait(timeout=240) == 0, log.read_text()
        finally:
            proc.kill()
    run = DagRunner._result(proc.returncode, log.read_text(), "kpo_example")
    assert run.state == "success", run.log
    for task_id in ("task", "write-xcom", "deferred_logs", "pod_task_xcom_result"):
        assert run.task(task_id)["state"] == "success", task_id
    assert run.xcom("write-xcom") == [1, 2, 3, 4]
    assert run.xcom("pod_task_xcom_result") == 10
    # in_cluster=True: the in-plane cluster; the namespace the DAG names is not allowed
    # there, and the task log says where the pods run instead.
    assert len(run.lines("dispatched to cluster plane")) == 3, run.log
    assert len(run.lines("The task asked for namespace 'default'")) == 2, run.log
    # The deferred task's pod log, streamed from the triggerer: once, in order.
    deferred_log = run.log[run.log.index("[DAG TEST] starting task_id=deferred_logs") :]
    streamed = [line for line in deferred_log.splitlines() if "DispatcherJobTrigger" in line]
    assert "dispatched to cluster plane" in streamed[0], streamed
    assert_once_in_order(pod_lines("\n".join(streamed)))

    # What the pods carried, as the apiserver has them.
    pod = by_task(seen, "task")
    spec = pod["spec"]
    [base] = spec["containers"]
    env = {e["name"]: e for e in base["env"]}
    assert env["SQL_CONN"]["value_from"]["secret_key_ref"] == {
        "name": "airflow-secrets",
        "key": "sql_alchemy_conn",
        "optional": None,
    }
    assert {
        kind: next((e[kind]["name"] for e in base["env_from"] if e.get(kind)), None)
        for kind in ("secret_ref", "config_map_ref")
    } == {"secret_ref": "airflow-secrets-2", "config_map_ref": "test-configmap-1"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["test-volume"]["persistent_volume_claim"]["claim_name"] == "test-volume"
    assert any(
        (v.get("secret") or {}).get("secret_name") == "airflow-secrets" for v in volumes.values()
    )
    mounts = {m["mount_path"] for m in base["volume_mounts"]}
    assert {"/root/mount_file", "/etc/sql_conn"} <= mounts
    [init] = [c for c in spec["init_containers"] if c["name"] == "init-container"]
    assert init["args"] == ["echo 10"]
    assert {
        "key": "nvidia.com/gpu",
        "operator": "Exists",
        "value": None,
        "effect": "NoSchedule",
    } in [{k: t[k] for k in ("key", "operator", "value", "effect")} for t in spec["tolerations"]]
    preferred = spec["affinity"]["node_affinity"][
        "preferred_during_scheduling_ignored_during_execution"
    ]
    assert preferred[0]["preference"]["match_expressions"][0]["key"] == "disktype"
    assert base["ports"][0]["container_port"] == 80
    assert pod["metadata"]["labels"]["foo"] == "bar"
    assert pod["metadata"]["name"].startswith("airflow-test-pod-")
