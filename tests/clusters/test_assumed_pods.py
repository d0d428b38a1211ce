"""Assumed pods keep two quick placements off the same free GPUs (real stack)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dispatcher.clusters import CacheOptions, ClusterCache
from dispatcher.core import Verdict, build_pod, parse_task_spec, route
from tests.clusters.conftest import FAST, GPU_TOLERATION, free_gpus, wait_for

H100 = "gpu-h100"


def h100_cache(
    make_cache: Callable[..., ClusterCache], namespace: str, **kwargs: Any
) -> ClusterCache:
    defaults = {"namespace": namespace, "gpu_tolerations": [GPU_TOLERATION]}
    cache = make_cache((H100,), pod_defaults=defaults, **kwargs)
    assert free_gpus(cache, H100) == 16, "gpu-h100 should start empty (2 nodes x 8 GPUs)"
    return cache


def whole_node_task(name: str) -> Any:
    return parse_task_spec(
        {
            "name": name,
            "image": "busybox",
            "container_resources": {"limits": {"nvidia.com/gpu": "8"}},
            "annotations": {"sim.dispatcher.dev/succeed-after": "600s"},
        }
    )


def place(cache: ClusterCache, job: str) -> dict[str, Any] | None:
    """Route a task wanting a whole node; assume its pod when placed (like the dispatcher)."""
    task = whole_node_task(job)
    decision = route(task, cache.snapshot())
    if decision.verdict is not Verdict.PLACE:
        return None
    assert decision.placement is not None
    manifest = build_pod(
        task, decision.placement, job_id=job, attempt=0, submitted_at=datetime.now(UTC)
    )
    cache.assume(H100, manifest)
    return manifest


def test_two_quick_placements_see_the_first_ones_assumed_usage(
    make_cache: Callable[..., ClusterCache], namespace: str
) -> None:
    cache = h100_cache(make_cache, namespace)
    first = place(cache, "job-1")
    second = place(cache, "job-2")
    assert first is not None
    assert second is not None
    assert place(cache, "job-3") is None  # both nodes are taken, though no pod exists yet
    # Each assumption sits on its own node, as the scheduler will place them.
    assert sorted(cache.assumed(H100).values()) == ["h100-0", "h100-1"]
    assert free_gpus(cache, H100) == 0


def test_forgetting_an_assumption_gives_its_gpus_back(
    make_cache: Callable[..., ClusterCache], namespace: str
) -> None:
    cache = h100_cache(make_cache, namespace)
    first = place(cache, "job-1")
    assert first is not None
    assert free_gpus(cache, H100) == 8
    cache.forget(H100, first["metadata"]["name"])
    assert cache.assumed(H100) == {}
    assert free_gpus(cache, H100) == 16


def test_an_assumption_gives_way_to_the_real_pod_once_it_is_bound(
    make_cache: Callable[..., ClusterCache], namespace: str
) -> None:
    cache = h100_cache(make_cache, namespace)
    manifests = [place(cache, "job-1"), place(cache, "job-2")]
    lowest = []
    cache.add_listener(lambda *event: lowest.append(free_gpus(cache, H100)))
    for manifest in manifests:
        assert manifest is not None
        cache.connection(H100).create_pod(namespace, manifest)
    wait_for(lambda: cache.assumed(H100) == {}, timeout=10, what="assumptions dropped")
    assert free_gpus(cache, H100) == 0
    assert max(lowest) == 0  # never a moment where the GPUs looked free twice
    assert place(cache, "job-3") is None


def test_an_assumption_for_a_pod_never_created_expires(
    make_cache: Callable[..., ClusterCache], namespace: str
) -> None:
    options = CacheOptions(
        health=FAST.health, watch=FAST.watch, tick_seconds=0.05, assume_ttl_seconds=0.5
    )
    cache = h100_cache(make_cache, namespace, options=options)
    freed: list[str] = []
    cache.add_listener(
        lambda cluster, kind, event_type, obj: (
            freed.append(event_type) if kind == "capacity" else None
        )
    )
    assert place(cache, "job-1") is not None
    assert free_gpus(cache, H100) == 8
    wait_for(lambda: free_gpus(cache, H100) == 16, timeout=2, what="assumption expired")
    assert freed == ["DELETED"]


def test_a_pod_that_fits_no_node_now_counts_as_queued(
    make_cache: Callable[..., ClusterCache], namespace: str
) -> None:
    cache = h100_cache(make_cache, namespace)
    for job in ("job-1", "job-2"):
        assert place(cache, job) is not None
    task = whole_node_task("job-3")
    state = cache.snapshot().cluster(H100)
    assert state is not None
    assert state.queue_depth == 0
    # The dispatcher placed it anyway (e.g. an explicit cluster pin): it queues there.
    from dispatcher.core import placement_for

    manifest = build_pod(
        task, placement_for(task, state), job_id="job-3", attempt=0, submitted_at=datetime.now(UTC)
    )
    cache.assume(H100, manifest)
    assert cache.assumed(H100)[manifest["metadata"]["name"]] is None
    assert cache.snapshot().cluster(H100).queue_depth == 1  # type: ignore[union-attr]
    assert cache.snapshot({H100: 2}).cluster(H100).queue_depth == 3  # type: ignore[union-attr]


def test_a_pod_bound_elsewhere_than_assumed_moves_the_other_assumption_out_of_its_way(
    make_cache: Callable[..., ClusterCache], namespace: str
) -> None:
    cache = h100_cache(make_cache, namespace)
    first, second = place(cache, "job-1"), place(cache, "job-2")
    assert first is not None
    assert second is not None
    names = {first["metadata"]["name"]: "first", second["metadata"]["name"]: "second"}
    assumed = {names[pod]: node for pod, node in cache.assumed(H100).items()}
    # The scheduler picks the node assumed for the *second* pod for the first one.
    first["spec"]["nodeName"] = assumed["second"]
    cache.connection(H100).create_pod(namespace, first)
    wait_for(lambda: len(cache.assumed(H100)) == 1, timeout=5, what="first seen bound")
    assert cache.assumed(H100) == {second["metadata"]["name"]: assumed["first"]}
    assert free_gpus(cache, H100) == 0
    assert place(cache, "job-3") is None
