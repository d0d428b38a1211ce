"""A watch whose resourceVersion expired (410 Gone) relists and misses nothing (real stack)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from kubernetes import client

from dispatcher.clusters import ClusterCache
from dispatcher.core import Health
from dispatcher.metrics import sample_value
from tests.clusters.conftest import (
    Outage,
    free_gpus,
    gpu_pod,
    managed,
    wait_for,
)
from tests.clusters.provider import KubeconfigProvider
from tests.stack import Stack


def compact_etcd(stack: Stack) -> None:
    """Compact the shared etcd at its current revision: no older version can be watched."""
    base = f"http://127.0.0.1:{stack.etcd_port()}"
    revision = httpx.post(f"{base}/v3/kv/range", json={"key": "AA=="}).json()["header"]["revision"]
    httpx.post(f"{base}/v3/kv/compaction", json={"revision": revision, "physical": True})


def restarts(reason: str) -> float:
    return sum(
        sample_value(
            "dispatcher_watch_restarts_total",
            {"cluster": "gpu-a100", "resource": resource, "reason": reason},
        )
        for resource in ("nodes", "pods-managed", "pods-other")
    )


def test_changes_made_while_the_watch_was_gone_are_all_seen_after_the_relist(
    make_cache: Callable[..., ClusterCache],
    provider: KubeconfigProvider,
    stack: Stack,
    a100_outage: Outage,
    namespace: str,
) -> None:
    cache = make_cache(("gpu-a100",))
    events: list[tuple[str, str, str]] = []
    cache.add_listener(
        lambda cluster, kind, event_type, obj: (
            events.append((kind, event_type, obj["metadata"]["name"]))
            if obj is not None and kind == "pod"
            else events.append((kind, event_type, cluster))
            if kind == "listed"
            else None
        )
    )
    # Pods are bound at creation and finished by a status update, so the test does not
    # wait on the stack's scheduler or KWOK.
    with stack.kube("gpu-a100") as admin:
        api = client.CoreV1Api(admin)
        conn = cache.connection("gpu-a100")
        conn.create_pod(namespace, gpu_pod("deleted", 1, labels=managed(), node_name="a100-0"))
        conn.create_pod(namespace, gpu_pod("finishes", 2, labels=managed(), node_name="a100-1"))
        wait_for(lambda: len(cache.managed_pods("gpu-a100")) == 2, timeout=5, what="pods seen")
        before = free_gpus(cache, "gpu-a100")

        # Cut the dispatcher off the cluster (the admin still reaches it).
        provider.host_override["gpu-a100"] = "https://127.0.0.1:1"
        provider.reset("gpu-a100")
        for informer in cache.informers("gpu-a100"):
            informer.reconnect()
        expired = restarts("expired")

        # Meanwhile: one of our pods is deleted, one finishes, one is created, and
        # somebody else takes 3 GPUs.
        api.delete_namespaced_pod("deleted", namespace, grace_period_seconds=0)
        api.patch_namespaced_pod_status("finishes", namespace, {"status": {"phase": "Succeeded"}})
        api.create_namespaced_pod(
            namespace, gpu_pod("created", 1, labels=managed(), node_name="a100-2")
        )
        api.create_namespaced_pod(namespace, gpu_pod("foreign", 3, node_name="a100-3"))
        # And one of ours comes and goes: neither list has it, no diff can report it.
        api.create_namespaced_pod(
            namespace, gpu_pod("ephemeral", 1, labels=managed(), node_name="a100-2")
        )
        api.delete_namespaced_pod("ephemeral", namespace, grace_period_seconds=0)
        # A restarted API server has a fresh watch cache and etcd is compacted: the
        # informers' resourceVersion is now too old to resume from.
        a100_outage.stop()
        a100_outage.start()
        compact_etcd(stack)
        assert free_gpus(cache, "gpu-a100") == before  # the cache has seen none of it

        del provider.host_override["gpu-a100"]
        provider.reset("gpu-a100")
        wait_for(lambda: restarts("expired") >= expired + 3, timeout=10, what="410 relists")
        wait_for(lambda: cache.health("gpu-a100") is Health.UP, timeout=10, what="up again")

    # - 1 (deleted) - 2 (finished) + 1 (created) + 3 (foreign)
    wait_for(lambda: free_gpus(cache, "gpu-a100") == before - 1, timeout=2, what="usage")
    # The event that proves the list's events are all out (none is still on its way).
    wait_for(lambda: ("listed", "relist", "gpu-a100") in events, timeout=5, what="listed")
    pods = {p["metadata"]["name"]: p for p in cache.managed_pods("gpu-a100")}
    assert set(pods) == {"finishes", "created"}
    assert pods["finishes"]["status"]["phase"] == "Succeeded"
    assert ("pod", "DELETED", "deleted") in events
    assert ("pod", "ADDED", "created") in events
    assert ("pod", "MODIFIED", "finishes") in events
    assert not [e for e in events if e[2] == "ephemeral"]
    # What no diff tells, the owner learns from the list being whole: "listed" comes after
    # the list's events (the dispatcher then reads the attempts the list lacks).
    relisted = events.index(("listed", "relist", "gpu-a100"))
    assert events.index(("pod", "DELETED", "deleted")) < relisted
    assert events.index(("pod", "ADDED", "created")) < relisted
