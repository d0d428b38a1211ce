"""A dead cluster goes down within the timeout, alone, and comes back by itself (real stack)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
from kubernetes import client

from dispatcher.clusters import CacheOptions, ClusterCache, WatchOptions
from dispatcher.core import Health
from dispatcher.errors import ClusterUnavailable
from dispatcher.metrics import sample_value
from tests.clusters.conftest import FAST, Outage, free_gpus, gpu_pod, managed, wait_for
from tests.stack import Stack


def test_a_stopped_apiserver_marks_its_cluster_down_in_time_while_the_others_keep_updating(
    make_cache: Callable[..., ClusterCache], stack: Stack, a100_outage: Outage, namespace: str
) -> None:
    cache = make_cache()
    health_changes: list[tuple[str, str]] = []
    cache.add_listener(
        lambda cluster, kind, event_type, obj: (
            health_changes.append((cluster, event_type)) if kind == "health" else None
        )
    )
    assert {cache.health(name) for name in cache.clusters} == {Health.UP}

    a100_outage.stop()
    stopped = time.monotonic()
    wait_for(
        lambda: cache.health("gpu-a100") is Health.DOWN,
        timeout=FAST.health.down_after_seconds + 1,
        what="gpu-a100 down",
    )
    assert time.monotonic() - stopped <= FAST.health.down_after_seconds + 1
    started = time.monotonic()
    snapshot = cache.snapshot()
    assert time.monotonic() - started < 0.1  # a dead cluster never blocks a snapshot
    assert snapshot.cluster("gpu-a100").health is Health.DOWN  # type: ignore[union-attr]

    # The other clusters stay up and their snapshots keep following changes.
    assert cache.health("gpu-h100") is Health.UP
    assert cache.health("plane") is Health.UP
    before = free_gpus(cache, "gpu-h100")
    cache.connection("gpu-h100").create_pod(namespace, gpu_pod("elsewhere", 2, labels=managed()))
    wait_for(lambda: free_gpus(cache, "gpu-h100") == before - 2, timeout=2, what="h100 update")

    # Requests to the dead cluster fail at once instead of waiting for timeouts.
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="gpu-a100"):
        cache.connection("gpu-a100").create_pod(namespace, gpu_pod("doomed", 1))
    assert time.monotonic() - started < 1.0

    # Restarted, it recovers on its own: same cache, same informers, fresh data.
    informers = cache.informers("gpu-a100")
    a100_outage.start()
    wait_for(lambda: cache.health("gpu-a100") is Health.UP, timeout=15, what="gpu-a100 up")
    assert cache.informers("gpu-a100") == informers
    before = free_gpus(cache, "gpu-a100")
    with stack.kube("gpu-a100") as admin:
        # Bound at creation: what is tested here is the cache, not the stack's scheduler.
        client.CoreV1Api(admin).create_namespaced_pod(
            namespace, gpu_pod("after", 4, node_name="a100-0")
        )
    wait_for(lambda: free_gpus(cache, "gpu-a100") == before - 4, timeout=1, what="a100 update")
    a100 = [change for cluster, change in health_changes if cluster == "gpu-a100"]
    assert "down" in a100
    assert a100[-1] == "up"
    assert all(cluster == "gpu-a100" for cluster, _ in health_changes)


def test_a_frozen_apiserver_is_noticed_by_the_watch_watchdog_and_recovers(
    make_cache: Callable[..., ClusterCache], stack: Stack
) -> None:
    # SIGSTOP keeps the TCP connections open but silent: only read timeouts can tell.
    options = CacheOptions(
        health=FAST.health,
        watch=WatchOptions(idle_timeout_seconds=2, backoff_base_seconds=0.2, backoff_max_seconds=1),
        tick_seconds=0.1,
    )
    cache = make_cache(
        ("gpu-a100",), options=options, connect_timeout_seconds=1, read_timeout_seconds=2
    )
    pid = stack._pids()["gpu-a100-apiserver"]
    timeouts = sample_value(
        "dispatcher_watch_restarts_total",
        {"cluster": "gpu-a100", "resource": "nodes", "reason": "timeout"},
    )
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        wait_for(lambda: cache.health("gpu-a100") is Health.DOWN, timeout=10, what="down")
        assert time.monotonic() - frozen < FAST.health.down_after_seconds + 3
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: cache.health("gpu-a100") is Health.UP, timeout=15, what="up again")
    assert (
        sample_value(
            "dispatcher_watch_restarts_total",
            {"cluster": "gpu-a100", "resource": "nodes", "reason": "timeout"},
        )
        > timeouts
    )
