"""Among clusters where a task fits now, routing picks by policy, and says why."""

from __future__ import annotations

from dispatcher.core import (
    ClusterRole,
    ClusterState,
    Health,
    NodeInfo,
    Reason,
    RoutingPolicy,
    ScoreWeights,
    Strategy,
    Verdict,
    route,
)

from .factories import (
    A100,
    H100,
    cluster,
    gpu_node,
    gpu_task,
    info,
    node,
    pod,
    snapshot,
    task,
)

PRICES = {A100: 2.75, H100: 4.90}


def _plane() -> ClusterState:
    return cluster(info("plane", role=ClusterRole.IN_PLANE, cpu_hour=0.5), [node("cpu-0")])


def test_in_plane_cluster_wins_when_the_task_fits_even_if_dearer() -> None:
    cheap = cluster(info("cheap", cpu_hour=0.01), [node("c-0")])
    decision = route(
        task(container_resources={"requests": {"cpu": "1"}}), snapshot(_plane(), cheap)
    )

    assert decision.verdict is Verdict.PLACE
    assert decision.cluster == "plane"
    outranked = decision.explain("cheap")
    assert outranked is not None
    assert outranked.reason is Reason.OUTRANKED
    assert "in-plane cluster plane is preferred" in outranked.message


def test_cheapest_cluster_wins_when_in_plane_is_not_preferred() -> None:
    cheap = cluster(info("cheap", cpu_hour=0.01), [node("c-0")])
    policy = RoutingPolicy(prefer_in_plane=False)
    decision = route(
        task(container_resources={"requests": {"cpu": "1"}}), snapshot(_plane(), cheap), policy
    )

    assert decision.cluster == "cheap"


def test_in_plane_cluster_loses_when_the_task_does_not_fit_there() -> None:
    big = cluster(info("big"), [node("b-0", cpu="64")])
    decision = route(task(container_resources={"requests": {"cpu": "32"}}), snapshot(_plane(), big))

    assert decision.cluster == "big"
    plane = decision.explain("plane")
    assert plane is not None
    assert plane.reason is Reason.INSUFFICIENT_CAPACITY
    assert plane.message == "needs 32 CPUs on one node, largest node has 16 CPUs"


def test_gpu_task_goes_to_cluster_with_free_a100s() -> None:
    a100 = cluster(info("gpu-a100", gpu_prices=PRICES), [gpu_node("a-0", A100)])
    h100 = cluster(info("gpu-h100", gpu_prices=PRICES), [gpu_node("h-0", H100)])
    decision = route(gpu_task(4, "A100"), snapshot(_plane(), a100, h100))

    assert decision.cluster == "gpu-a100"
    assert decision.placement is not None
    assert decision.placement.gpu_model_labels == {"nvidia.com/gpu.product": (A100,)}
    h100_verdict = decision.explain("gpu-h100")
    assert h100_verdict is not None
    assert h100_verdict.reason is Reason.GPU_MODEL_UNAVAILABLE


def test_gpu_task_goes_to_the_cheapest_cluster_with_free_gpus_of_its_model() -> None:
    dear = cluster(info("a100-dear", gpu_prices={A100: 3.5}), [gpu_node("d-0")])
    cheap = cluster(info("a100-cheap", gpu_prices={A100: 2.0}), [gpu_node("c-0")])
    decision = route(gpu_task(2, "a100"), snapshot(dear, cheap))

    assert decision.cluster == "a100-cheap"
    outranked = decision.explain("a100-dear")
    assert outranked is not None
    assert "a100-cheap is cheaper" in outranked.message


def test_gpu_task_skips_the_cheapest_cluster_when_its_gpus_are_taken() -> None:
    dear = cluster(info("a100-dear", gpu_prices={A100: 3.5}), [gpu_node("d-0")])
    cheap = cluster(
        info("a100-cheap", gpu_prices={A100: 2.0}),
        [gpu_node("c-0")],
        [pod("c-0", gpus=8)],
    )
    decision = route(gpu_task(2, "a100"), snapshot(dear, cheap))

    assert decision.cluster == "a100-dear"
    busy = decision.explain("a100-cheap")
    assert busy is not None
    assert busy.verdict is Verdict.WAIT
    assert busy.message == "needs 2 GPUs free on one node, most free now is 0 GPUs"


def test_healthy_cluster_wins_over_a_degraded_one() -> None:
    degraded = cluster(info("a-degraded", cpu_hour=0.01), [node("d-0")], health=Health.DEGRADED)
    healthy = cluster(info("b-healthy", cpu_hour=0.5), [node("h-0")])
    decision = route(task(), snapshot(degraded, healthy))

    assert decision.cluster == "b-healthy"
    verdict = decision.explain("a-degraded")
    assert verdict is not None
    assert verdict.verdict is Verdict.PLACE
    assert "degraded" in verdict.message


def test_least_loaded_prefers_the_cluster_with_most_free_room() -> None:
    busy = cluster(info("busy", cpu_hour=0.01), [node("b-0")], [pod("b-0", cpu="12")])
    idle = cluster(info("idle", cpu_hour=0.5), [node("i-0")])
    policy = RoutingPolicy(strategy=Strategy.LEAST_LOADED)
    decision = route(
        task(container_resources={"requests": {"cpu": "1"}}), snapshot(busy, idle), policy
    )

    assert decision.cluster == "idle"


def test_bin_pack_prefers_the_fullest_cluster_that_fits() -> None:
    busy = cluster(info("busy", cpu_hour=0.5), [node("b-0")], [pod("b-0", cpu="12")])
    idle = cluster(info("idle", cpu_hour=0.01), [node("i-0")])
    policy = RoutingPolicy(strategy=Strategy.BIN_PACK)
    decision = route(
        task(container_resources={"requests": {"cpu": "1"}}), snapshot(busy, idle), policy
    )

    assert decision.cluster == "busy"


def test_weighted_strategy_trades_cost_against_headroom() -> None:
    busy_cheap = cluster(info("busy-cheap", cpu_hour=0.10), [node("b-0")], [pod("b-0", cpu="14")])
    idle_dear = cluster(info("idle-dear", cpu_hour=0.11), [node("i-0")])
    request = task(container_resources={"requests": {"cpu": "1"}})
    cost_only = RoutingPolicy(
        strategy=Strategy.WEIGHTED, weights=ScoreWeights(cost=1.0, headroom=0.0)
    )
    balanced = RoutingPolicy(
        strategy=Strategy.WEIGHTED, weights=ScoreWeights(cost=1.0, headroom=1.0)
    )

    assert route(request, snapshot(busy_cheap, idle_dear), cost_only).cluster == "busy-cheap"
    assert route(request, snapshot(busy_cheap, idle_dear), balanced).cluster == "idle-dear"


def test_equal_clusters_are_chosen_by_name() -> None:
    first = cluster(info("alpha"), [node("a-0")])
    second = cluster(info("beta"), [node("b-0")])

    assert route(task(), snapshot(second, first)).cluster == "alpha"


def test_least_loaded_avoids_clusters_with_tasks_queued_for_them() -> None:
    queued = ClusterState.build(
        info("queued"), nodes=[NodeInfo("q-0", {"cpu": 64_000, "pods": 110})], queue_depth=5
    )
    quiet = ClusterState.build(info("quiet"), nodes=[NodeInfo("z-0", {"cpu": 16_000, "pods": 110})])
    policy = RoutingPolicy(strategy=Strategy.LEAST_LOADED)
    decision = route(task(), snapshot(queued, quiet), policy)

    assert decision.cluster == "quiet"
    verdict = decision.explain("queued")
    assert verdict is not None
    assert verdict.message == "fits, fewer tasks wait for quiet"
