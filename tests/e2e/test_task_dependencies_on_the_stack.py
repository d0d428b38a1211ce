"""Routing knows where a task's Secrets, ConfigMaps, PVCs and ServiceAccounts are: on the
real stack, a PVC that only gpu-h100's task namespace holds pins the task there (and the
others are explained by the PVC's name), and a Secret key missing everywhere rejects the
task naming the Secret and the key, with no pod created anywhere."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from dispatcher.client import DispatcherClient
from tests.stack import Stack
from tests.support import task, wait_until

CLUSTERS = ("plane", "gpu-a100", "gpu-h100")


def _pods(stack: Stack, cluster: str, namespace: str) -> list[Any]:
    with stack.kube(cluster) as api:
        return list(client.CoreV1Api(api).list_namespaced_pod(namespace).items)


def _create_pvc(stack: Stack, cluster: str, namespace: str, name: str) -> None:
    with stack.kube(cluster) as api:
        client.CoreV1Api(api).create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )


def _pvc_task(name: str, claim: str) -> dict[str, Any]:
    return task(
        name,
        gpus=1,
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        volume_mounts=[{"name": "data", "mountPath": "/data"}],
    )


def _verdicts(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["cluster"]: c for c in decision["clusters"]}


def test_a_pvc_only_in_gpu_h100_pins_the_task_there_and_the_others_name_it(
    stack: Stack, api: DispatcherClient, namespace: str
) -> None:
    _create_pvc(stack, "gpu-h100", namespace, "dataset-a")
    spec = _pvc_task("pinned", "dataset-a")
    # Without the PVC, the cheaper gpu-a100 would take this task.
    decision = wait_until(
        lambda: (d := api.explain(spec))["verdict"] == "place" and d,
        what="routing to see the PVC",
    )
    assert decision["cluster"] == "gpu-h100"
    verdicts = _verdicts(decision)
    for other in ("plane", "gpu-a100"):
        assert verdicts[other]["reason"] == "dependency-missing"
        assert verdicts[other]["message"] == (
            f"PersistentVolumeClaim dataset-a not in namespace {namespace}"
        )
        missing = verdicts[other]["dependencies"]["missing"]
        assert [(m["kind"], m["name"]) for m in missing] == [("PersistentVolumeClaim", "dataset-a")]
    present = verdicts["gpu-h100"]["dependencies"]["present"]
    assert [(p["kind"], p["name"]) for p in present] == [("PersistentVolumeClaim", "dataset-a")]

    job, _ = api.submit(spec)
    assert job["state"] != "rejected", job
    wait_until(lambda: _pods(stack, "gpu-h100", namespace), what="the pod in gpu-h100's namespace")
    assert api.get(job["id"])["cluster"] == "gpu-h100"
    assert _pods(stack, "gpu-a100", namespace) == []
    api.cancel(job["id"])


def test_a_secret_key_missing_everywhere_rejects_the_task_naming_secret_and_key(
    stack: Stack, api: DispatcherClient, namespace: str
) -> None:
    for cluster in CLUSTERS:
        with stack.kube(cluster) as kube:
            client.CoreV1Api(kube).create_namespaced_secret(
                namespace, {"metadata": {"name": "db"}, "stringData": {"user": "etl"}}
            )
    spec = task(
        "needs-password",
        env_vars=[{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
    )
    # The Secret is seen everywhere (its key user), the key password nowhere.
    wait_until(
        lambda: all(
            v["dependencies"] and v["dependencies"]["missing"]
            for v in api.explain(spec)["clusters"]
        ),
        what="every cluster's view of Secret db",
    )
    job, created = api.submit(spec)
    assert created
    assert job["state"] == "rejected", job
    for cluster in CLUSTERS:
        assert f"{cluster}: Secret db has no key password" in job["message"], job["message"]
    for cluster in CLUSTERS:
        assert _pods(stack, cluster, namespace) == []
