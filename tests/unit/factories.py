"""Builders of Kubernetes-shaped dicts and core values for unit tests."""

from __future__ import annotations

from typing import Any

from dispatcher.core import (
    ClusterInfo,
    ClusterRole,
    ClusterState,
    CostTable,
    Health,
    PodDefaults,
    Snapshot,
    TaskSpec,
    parse_task_spec,
)

A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def node(
    name: str,
    *,
    cpu: str = "16",
    memory: str = "64Gi",
    gpus: int = 0,
    gpu_model: str | None = None,
    pods: str = "110",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    ready: bool = True,
    unschedulable: bool = False,
) -> dict[str, Any]:
    allocatable = {"cpu": cpu, "memory": memory, "pods": pods}
    all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    if gpu_model:
        all_labels["nvidia.com/gpu.product"] = gpu_model
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "metadata": {"name": name, "labels": all_labels},
        "spec": spec,
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def gpu_node(name: str, model: str = A100, gpus: int = 8, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("cpu", "96")
    kwargs.setdefault("memory", "1000Gi")
    kwargs.setdefault("taints", [GPU_TAINT])
    return node(name, gpus=gpus, gpu_model=model, **kwargs)


def pod(
    node_name: str | None,
    *,
    cpu: str | None = None,
    memory: str | None = None,
    gpus: int = 0,
    phase: str = "Running",
    name: str = "p",
) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {
        "containers": [{"name": "base", "resources": {"requests": requests, "limits": limits}}]
    }
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name}, "spec": spec, "status": {"phase": phase}}


def info(
    name: str,
    *,
    role: ClusterRole = ClusterRole.EXTERNAL,
    region: str | None = None,
    cpu_hour: float = 0.03,
    gpu_prices: dict[str, float] | None = None,
    default_gpu_toleration: bool = True,
    **defaults: Any,
) -> ClusterInfo:
    labels = {"topology.kubernetes.io/region": region} if region else {}
    if default_gpu_toleration:
        defaults.setdefault("gpu_tolerations", [GPU_TOLERATION])
    return ClusterInfo(
        name=name,
        role=role,
        labels=labels,
        cost=CostTable(cpu_hour=cpu_hour, memory_gib_hour=0.004, gpu_hour=gpu_prices or {}),
        pod_defaults=PodDefaults.model_validate(defaults),
    )


def cluster(
    cluster_info: ClusterInfo,
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]] | None = None,
    health: Health = Health.UP,
) -> ClusterState:
    return ClusterState.from_k8s(cluster_info, health=health, nodes=nodes, pods=pods or [])


def snapshot(*clusters: ClusterState) -> Snapshot:
    return Snapshot.of(clusters)


def task(**fields: Any) -> TaskSpec:
    fields.setdefault("image", "busybox:1.36")
    return parse_task_spec(fields)


def gpu_task(gpus: int = 1, model: str | None = None, **fields: Any) -> TaskSpec:
    requirements = dict(fields.pop("requirements", {}))
    if model:
        requirements["gpu_model"] = model
    fields.setdefault("container_resources", {"limits": {"nvidia.com/gpu": str(gpus)}})
    return task(requirements=requirements, **fields)
