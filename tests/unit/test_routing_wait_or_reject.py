"""A task no cluster can run now WAITs if some cluster could later, else it is REJECTed;
every cluster says why, with a stable reason code and words a DAG author understands."""

from __future__ import annotations

from dispatcher.core import Health, Reason, Verdict, route

from .factories import (
    A100,
    GPU_TAINT,
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


def test_task_needing_more_gpus_than_any_node_has_is_rejected_everywhere() -> None:
    a100 = cluster(info("gpu-a100"), [gpu_node("a-0"), gpu_node("a-1")])
    decision = route(gpu_task(16), snapshot(a100))

    assert decision.verdict is Verdict.REJECT
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert verdict.reason is Reason.INSUFFICIENT_CAPACITY
    assert str(verdict) == "gpu-a100: needs 16 GPUs on one node, largest node has 8"
    assert "no cluster can ever run this task" in decision.message()


def test_task_waits_when_gpus_exist_but_are_busy() -> None:
    a100 = cluster(info("gpu-a100"), [gpu_node("a-0")], [pod("a-0", gpus=6)])
    decision = route(gpu_task(4), snapshot(a100))

    assert decision.verdict is Verdict.WAIT
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert verdict.reason is Reason.INSUFFICIENT_FREE
    assert verdict.message == "needs 4 GPUs free on one node, most free now is 2 GPUs"


def test_finished_pods_do_not_hold_resources() -> None:
    a100 = cluster(
        info("gpu-a100"),
        [gpu_node("a-0")],
        [pod("a-0", gpus=8, phase="Succeeded"), pod("a-0", gpus=8, phase="Failed")],
    )

    assert route(gpu_task(8), snapshot(a100)).verdict is Verdict.PLACE


def test_task_waits_for_a_down_cluster_that_could_run_it() -> None:
    down = cluster(info("gpu-a100"), [gpu_node("a-0")], health=Health.DOWN)
    decision = route(gpu_task(1), snapshot(down))

    assert decision.verdict is Verdict.WAIT
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert verdict.reason is Reason.CLUSTER_DOWN


def test_task_waits_for_a_cluster_whose_credentials_are_unavailable_and_says_so() -> None:
    # Not down (its pods keep running), but nothing can be created there now.
    unusable = cluster(info("gpu-a100"), [gpu_node("a-0")], health=Health.CREDENTIALS_UNAVAILABLE)
    unknown = cluster(info("gpu-h100"), [], health=Health.CREDENTIALS_UNAVAILABLE)
    decision = route(gpu_task(1), snapshot(unusable, unknown))

    assert decision.verdict is Verdict.WAIT
    for name in ("gpu-a100", "gpu-h100"):
        verdict = decision.explain(name)
        assert verdict is not None
        assert verdict.verdict is Verdict.WAIT
        assert verdict.reason is Reason.CREDENTIALS_UNAVAILABLE
        assert "credentials are unavailable" in verdict.message


def test_task_is_rejected_by_a_down_cluster_that_could_never_run_it() -> None:
    down = cluster(info("plane"), [node("cpu-0")], health=Health.DOWN)
    decision = route(gpu_task(1), snapshot(down))

    assert decision.verdict is Verdict.REJECT


def test_task_waits_when_the_only_fitting_nodes_are_not_ready_or_cordoned() -> None:
    state = cluster(info("c"), [node("n-0", ready=False), node("n-1", unschedulable=True)])
    decision = route(task(), snapshot(state))

    assert decision.verdict is Verdict.WAIT
    verdict = decision.explain("c")
    assert verdict is not None
    assert verdict.reason is Reason.NODES_NOT_READY
    assert verdict.message == "the 2 nodes that could run it are not ready or cordoned"


def test_gpu_nodes_refuse_a_task_without_the_cluster_gpu_toleration() -> None:
    no_toleration = cluster(info("gpu-a100", default_gpu_toleration=False), [gpu_node("a-0")])
    decision = route(gpu_task(1), snapshot(no_toleration))

    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert verdict.reason is Reason.UNTOLERATED_TAINT
    assert "nvidia.com/gpu=present:NoSchedule" in verdict.message


def test_gpu_tolerations_are_not_given_to_cpu_tasks() -> None:
    state = cluster(info("gpu-a100"), [gpu_node("a-0")])
    verdict = route(task(), snapshot(state)).explain("gpu-a100")

    assert verdict is not None
    assert verdict.reason is Reason.UNTOLERATED_TAINT


def test_task_tolerating_the_taint_itself_may_use_gpu_nodes_without_gpus() -> None:
    state = cluster(info("gpu-a100"), [gpu_node("a-0")])
    tolerant = task(tolerations=[{"key": GPU_TAINT["key"], "operator": "Exists"}])

    assert route(tolerant, snapshot(state)).verdict is Verdict.PLACE


def test_gpu_model_mismatch_is_explained_with_the_models_present() -> None:
    state = cluster(info("gpu-h100"), [gpu_node("h-0", H100)])
    verdict = route(gpu_task(1, "A100"), snapshot(state)).explain("gpu-h100")

    assert verdict is not None
    assert verdict.reason is Reason.GPU_MODEL_UNAVAILABLE
    assert verdict.message == f"no A100 GPUs here, only {H100}"


def test_allow_list_and_region_reject_clusters_before_looking_at_nodes() -> None:
    us = cluster(info("us", region="us-east-1"), [node("u-0")])
    eu = cluster(info("eu", region="eu-west-1"), [node("e-0")])
    other = cluster(info("other", region="us-east-1"), [node("o-0")])
    decision = route(
        task(requirements={"region": "us-east-1", "allowed_clusters": ["us", "eu"]}),
        snapshot(us, eu, other),
    )

    assert decision.cluster == "us"
    eu_verdict, other_verdict = decision.explain("eu"), decision.explain("other")
    assert eu_verdict is not None
    assert other_verdict is not None
    assert eu_verdict.reason is Reason.CLUSTER_LABELS_MISMATCH
    assert "topology.kubernetes.io/region is 'eu-west-1'" in eu_verdict.message
    assert other_verdict.reason is Reason.NOT_ALLOWED


def test_cost_cap_rejects_clusters_that_would_cost_more() -> None:
    dear = cluster(info("dear", gpu_prices={A100: 5.0}), [gpu_node("d-0")])
    decision = route(gpu_task(4, requirements={"max_cost_per_hour": 10}), snapshot(dear))

    assert decision.verdict is Verdict.REJECT
    verdict = decision.explain("dear")
    assert verdict is not None
    assert verdict.reason is Reason.OVER_COST_CAP
    assert "over the task's cap of $10.00/h" in verdict.message


def test_cost_cap_rejects_clusters_whose_gpus_have_no_price() -> None:
    unpriced = cluster(info("unpriced"), [gpu_node("u-0")])
    verdict = route(
        gpu_task(1, requirements={"max_cost_per_hour": 10}), snapshot(unpriced)
    ).explain("unpriced")

    assert verdict is not None
    assert verdict.reason is Reason.COST_UNKNOWN


def test_node_selector_and_affinity_mismatches_are_explained() -> None:
    state = cluster(info("c"), [node("n-0", labels={"pool": "a"})])
    by_selector = route(task(node_selector={"pool": "b"}), snapshot(state)).explain("c")
    by_affinity = route(
        task(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "pool", "operator": "NotIn", "values": ["a"]}
                                ]
                            }
                        ]
                    }
                }
            }
        ),
        snapshot(state),
    ).explain("c")

    assert by_selector is not None
    assert by_selector.reason is Reason.NODE_SELECTOR_MISMATCH
    assert by_selector.message == "no node matches node selector pool=b"
    assert by_affinity is not None
    assert by_affinity.reason is Reason.NODE_AFFINITY_MISMATCH


def test_task_selector_contradicting_the_cluster_pinned_selector_is_refused() -> None:
    state = cluster(
        info("c", node_selector={"pool": "batch"}), [node("n-0", labels={"pool": "batch"})]
    )
    verdict = route(task(node_selector={"pool": "gpu"}), snapshot(state)).explain("c")

    assert verdict is not None
    assert verdict.reason is Reason.NODE_SELECTOR_MISMATCH
    assert "this cluster pins pool=batch" in verdict.message


def test_hostname_selector_is_checked_node_by_node() -> None:
    state = cluster(info("c"), [node("n-0"), node("n-1")], [pod("n-1", cpu="16")])
    pinned = task(
        container_resources={"requests": {"cpu": "1"}},
        node_selector={"kubernetes.io/hostname": "n-1"},
    )
    elsewhere = task(node_selector={"kubernetes.io/hostname": "n-9"})

    assert len(state.shapes) == 1
    assert route(pinned, snapshot(state)).verdict is Verdict.WAIT
    assert route(elsewhere, snapshot(state)).verdict is Verdict.REJECT


def test_cluster_without_nodes_is_rejected() -> None:
    verdict = route(task(), snapshot(cluster(info("empty"), []))).explain("empty")

    assert verdict is not None
    assert verdict.reason is Reason.NO_NODES


def test_no_clusters_means_reject() -> None:
    decision = route(task(), snapshot())

    assert decision.verdict is Verdict.REJECT
    assert decision.message() == "no clusters are configured"


def test_a100_task_is_not_placed_on_a_cluster_with_only_free_h100s() -> None:
    mixed = cluster(
        info("mixed"),
        [gpu_node("a-0", A100), gpu_node("h-0", H100)],
        [pod("a-0", gpus=8)],
    )
    decision = route(gpu_task(1, "a100"), snapshot(mixed))

    assert decision.verdict is Verdict.WAIT


def test_a_down_cluster_whose_nodes_are_unknown_is_waited_for_not_rejected() -> None:
    # Before its first list (or while unreachable from the start) a cluster shows no nodes.
    unknown = cluster(info("gpu-a100"), [], health=Health.DOWN)
    decision = route(gpu_task(4), snapshot(unknown))

    assert decision.verdict is Verdict.WAIT
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert verdict.reason is Reason.CLUSTER_DOWN


def test_an_up_cluster_without_nodes_rejects() -> None:
    empty = cluster(info("gpu-a100"), [])
    decision = route(gpu_task(4), snapshot(empty))

    assert decision.verdict is Verdict.REJECT
    assert decision.explain("gpu-a100").reason is Reason.NO_NODES  # type: ignore[union-attr]
