"""Fixtures for the cluster edge: caches over the stack, fault helpers, pod builders."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.clusters import CacheOptions, ClusterCache, HealthPolicy, WatchOptions
from dispatcher.core import PodDefaults, quantity
from dispatcher.settings import (
    ClientSettings,
    ClusterSettings,
    Credentials,
    InsecureAllowances,
    KubeconfigFileCredentials,
)
from tests.clusters.provider import KubeconfigProvider
from tests.stack import Stack, StackEnv

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def cluster_settings(
    env: StackEnv,
    name: str,
    *,
    watch_all_pods: bool = True,
    pod_defaults: dict[str, Any] | None = None,
    check_dependencies: bool = False,
    **client_kwargs: Any,
) -> ClusterSettings:
    # Off unless asked: these caches watch namespace "default", where the stack grants the
    # dispatcher identity nothing, and the tests here count watches and requests of nodes
    # and pods (tests/clusters/test_dependency_view.py turns it on in a granted namespace).
    return ClusterSettings(
        name=name,
        role="in-plane" if name == "plane" else "external",
        credentials=Credentials(
            kubeconfig_file=KubeconfigFileCredentials(
                path=Path(env.clusters[name].restricted_kubeconfig)
            )
        ),
        client=ClientSettings(watch_all_pods=watch_all_pods, **client_kwargs),
        allow_insecure=InsecureAllowances(allow_private_addresses=True),
        pod_defaults=PodDefaults.model_validate(pod_defaults or {}),
        check_dependencies=check_dependencies,
    )


#: Short timings so fault tests finish in seconds.
FAST = CacheOptions(
    health=HealthPolicy(
        failure_threshold=3,
        down_after_seconds=4.0,
        probe_after_seconds=0.5,
        max_probe_after_seconds=2.0,
        throttled_seconds=2.0,
    ),
    watch=WatchOptions(backoff_base_seconds=0.2, backoff_max_seconds=1.0),
    tick_seconds=0.1,
)


@pytest.fixture
def provider(stack_env: StackEnv) -> KubeconfigProvider:
    return KubeconfigProvider(stack_env)


@pytest.fixture
def make_cache(
    stack_env: StackEnv, provider: KubeconfigProvider
) -> Iterator[Callable[..., ClusterCache]]:
    """Build and start a cache over the stack's clusters; stopped at teardown."""
    caches: list[ClusterCache] = []

    def make(
        clusters: tuple[str, ...] = ("plane", "gpu-a100", "gpu-h100"),
        options: CacheOptions = FAST,
        **settings_kwargs: Any,
    ) -> ClusterCache:
        cache = ClusterCache(
            [cluster_settings(stack_env, name, **settings_kwargs) for name in clusters],
            provider,
            options=options,
        )
        caches.append(cache)
        cache.start()
        assert cache.wait_synced(30), "informers did not sync within 30 s"
        return cache

    yield make
    for cache in caches:
        cache.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def gpu_pod(
    name: str,
    gpus: int,
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    node_name: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "main",
                "image": "busybox",
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"},
                    "limits": {"memory": "1Gi", "nvidia.com/gpu": str(gpus)},
                },
            }
        ],
        "tolerations": [GPU_TOLERATION],
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
        "spec": spec,
    }


def free_gpus(cache: ClusterCache, cluster: str) -> int:
    """Free GPUs of the cluster's ready nodes, as routing sees them now."""
    state = cache.snapshot().cluster(cluster)
    assert state is not None
    return sum(shape.total_free.get(quantity.GPU, 0) for shape in state.shapes if shape.ready)


def managed(labels: dict[str, str] | None = None) -> dict[str, str]:
    return {"kube-dispatcher.dev/managed-by": "kube-dispatcher", **(labels or {})}


class Outage:
    """Stops and restarts one cluster's API server for a test.

    After a restart the stack's kube-scheduler and KWOK take a minute or more to resume
    (their own reconnect backoff), which would slow every later test down; they are
    restarted with the API server so the stack is whole again at once.
    """

    def __init__(self, stack: Stack, faults: Any, cluster: str) -> None:
        self.stack = stack
        self.faults = faults
        self.cluster = cluster
        self.restarted = False

    def stop(self) -> None:
        self.faults.stop_apiserver(self.cluster)

    def start(self) -> None:
        self.faults.start_apiserver(self.cluster)
        self.restarted = True

    def revive_controllers(self) -> None:
        spec = next(s for s in self.stack.clusters if s.name == self.cluster)
        for name, start in (
            (f"{self.cluster}-scheduler", self.stack._start_scheduler),
            (f"{self.cluster}-kwok", self.stack._start_kwok),
        ):
            self.stack._kill(name)
            start(spec)


@pytest.fixture
def a100_outage(stack: Stack, faults: Any) -> Iterator[Outage]:
    outage = Outage(stack, faults, "gpu-a100")
    yield outage
    faults.restore()
    outage.revive_controllers()
