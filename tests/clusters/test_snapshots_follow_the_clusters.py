"""Snapshots follow what happens on the clusters within a second (real stack)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from dispatcher.clusters import ClusterCache
from dispatcher.metrics import sample_value
from tests.clusters.conftest import free_gpus, gpu_pod, managed, wait_for
from tests.stack import Stack

SUCCEED_AFTER = "sim.dispatcher.dev/succeed-after"


def lag_after(happened: Callable[[], bool], seen: Callable[[], bool], timeout: float = 30) -> float:
    """Seconds from when the API shows ``happened`` to when the cache shows ``seen``.

    Both are polled together every 20 ms; a cache faster than the poll counts as 0.
    """
    deadline = time.monotonic() + timeout
    happened_at = seen_at = None
    while happened_at is None or seen_at is None:
        now = time.monotonic()
        assert now < deadline, f"happened={happened_at is not None} seen={seen_at is not None}"
        if happened_at is None and happened():
            happened_at = now
        if seen_at is None and seen():
            seen_at = now
        time.sleep(0.02)
    return max(0.0, seen_at - happened_at)


def follow_pod_lifecycle(
    cache: ClusterCache, api: Any, namespace: str, name: str, gpus: int, before: int
) -> tuple[float, float]:
    def pod() -> Any:
        return api.read_namespaced_pod(name, namespace)

    bound = lag_after(
        lambda: bool(pod().spec.node_name), lambda: free_gpus(cache, "gpu-a100") == before - gpus
    )
    finished = lag_after(
        lambda: pod().status.phase == "Succeeded", lambda: free_gpus(cache, "gpu-a100") == before
    )
    return bound, finished


def test_free_gpus_follow_someone_elses_pod_from_binding_to_finishing_within_a_second(
    make_cache: Callable[..., ClusterCache], stack: Stack, namespace: str
) -> None:
    cache = make_cache(("gpu-a100",))
    before = free_gpus(cache, "gpu-a100")
    with stack.kube("gpu-a100") as admin:
        api = client.CoreV1Api(admin)
        api.create_namespaced_pod(
            namespace, gpu_pod("foreign", 3, annotations={SUCCEED_AFTER: "3s"})
        )
        bound, finished = follow_pod_lifecycle(cache, api, namespace, "foreign", 3, before)
    assert bound < 1.0
    assert finished < 1.0


def test_free_gpus_follow_our_own_pod_and_its_events_reach_listeners(
    make_cache: Callable[..., ClusterCache], stack: Stack, namespace: str
) -> None:
    cache = make_cache(("gpu-a100",))
    events: list[tuple[str, str, str]] = []
    cache.add_listener(
        lambda cluster, kind, event_type, obj: (
            events.append((cluster, kind, event_type))
            if kind == "pod" and obj and obj["metadata"]["name"] == "ours"
            else None
        )
    )
    before = free_gpus(cache, "gpu-a100")
    manifest = gpu_pod("ours", 2, labels=managed(), annotations={SUCCEED_AFTER: "3s"})
    created = cache.connection("gpu-a100").create_pod(namespace, manifest)
    assert created["metadata"]["uid"]  # a raw dict, as the API wrote it
    with stack.kube("gpu-a100") as admin:
        bound, finished = follow_pod_lifecycle(
            cache, client.CoreV1Api(admin), namespace, "ours", 2, before
        )
    assert bound < 1.0
    assert finished < 1.0
    assert events[0] == ("gpu-a100", "pod", "ADDED")
    assert ("gpu-a100", "pod", "MODIFIED") in events
    phases = {
        p["status"]["phase"]
        for p in cache.managed_pods("gpu-a100")
        if p["metadata"]["name"] == "ours"
    }
    assert phases == {"Succeeded"}  # our pods stay visible after they finish


def test_without_watching_all_pods_only_our_own_pods_count(
    make_cache: Callable[..., ClusterCache], stack: Stack, namespace: str
) -> None:
    cache = make_cache(("gpu-a100",), watch_all_pods=False)
    assert [i.name for i in cache.informers("gpu-a100")] == ["nodes", "pods-managed"]
    before = free_gpus(cache, "gpu-a100")
    with stack.kube("gpu-a100") as admin:
        api = client.CoreV1Api(admin)
        api.create_namespaced_pod(namespace, gpu_pod("invisible", 4))
        wait_for(
            lambda: api.read_namespaced_pod("invisible", namespace).spec.node_name, what="bound"
        )
    cache.connection("gpu-a100").create_pod(namespace, gpu_pod("visible", 1, labels=managed()))
    wait_for(lambda: free_gpus(cache, "gpu-a100") == before - 1, timeout=5, what="ours counted")
    time.sleep(0.3)
    assert free_gpus(cache, "gpu-a100") == before - 1


def test_capacity_is_published_as_metrics(
    make_cache: Callable[..., ClusterCache], stack: Stack, namespace: str
) -> None:
    cache = make_cache(("gpu-h100",))
    model = {"cluster": "gpu-h100", "gpu_model": "NVIDIA-H100-80GB-HBM3"}
    wait_for(
        lambda: sample_value("dispatcher_cluster_gpus_allocatable", model) == 16,
        timeout=5,
        what="allocatable GPUs published",
    )
    before = sample_value("dispatcher_cluster_gpus_free", model)
    cache.connection("gpu-h100").create_pod(namespace, gpu_pod("metered", 5, labels=managed()))
    wait_for(
        lambda: sample_value("dispatcher_cluster_gpus_free", model) == before - 5,
        timeout=5,
        what="free GPUs published",
    )
    cores = sample_value(
        "dispatcher_cluster_allocatable", {"cluster": "gpu-h100", "resource": "cpu"}
    )
    assert cores == 2 * 192
