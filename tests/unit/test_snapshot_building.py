"""Snapshots are built from Kubernetes-shaped nodes and pods the way the scheduler sees
them, and alike nodes collapse into shapes so routing cost follows shapes, not nodes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core import (
    ClusterState,
    CostTable,
    NodeInfo,
    NodeShape,
    Snapshot,
    pod_requests,
    snapshot_from_document,
    usage_by_node,
)
from dispatcher.core.snapshot import gpu_model_matches
from dispatcher.errors import SnapshotError

from .factories import A100, GPU_TAINT, H100, gpu_node, info, node, pod

GiB = 2**30


def _container(
    requests: dict[str, str] | None = None, limits: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"name": "c", "resources": {"requests": requests or {}, "limits": limits or {}}, **extra}


class TestPodRequests:
    def test_containers_add_up(self) -> None:
        p = {
            "spec": {
                "containers": [
                    _container({"cpu": "1", "memory": "1Gi"}),
                    _container({"cpu": "500m"}),
                ]
            }
        }
        assert pod_requests(p) == {"cpu": 1500, "memory": GiB}

    def test_requests_default_to_limits(self) -> None:
        p = {"spec": {"containers": [_container(limits={"memory": "2Gi", "nvidia.com/gpu": "2"})]}}
        assert pod_requests(p) == {"memory": 2 * GiB, "nvidia.com/gpu": 2}

    def test_the_largest_init_container_raises_the_total(self) -> None:
        p = {
            "spec": {
                "initContainers": [_container({"cpu": "4"}), _container({"memory": "1Gi"})],
                "containers": [_container({"cpu": "1", "memory": "4Gi"})],
            }
        }
        assert pod_requests(p) == {"cpu": 4000, "memory": 4 * GiB}

    def test_sidecar_init_containers_run_alongside_everything_after_them(self) -> None:
        p = {
            "spec": {
                "initContainers": [
                    _container({"cpu": "1"}, restartPolicy="Always"),
                    _container({"cpu": "3"}),
                ],
                "containers": [_container({"cpu": "2"})],
            }
        }
        # Sidecar 1 + regular init 3 = 4 during init; sidecar 1 + main 2 = 3 after.
        assert pod_requests(p) == {"cpu": 4000}

    def test_overhead_and_pod_level_requests_count(self) -> None:
        p = {
            "spec": {
                "containers": [_container({"cpu": "1", "memory": "1Gi"})],
                "resources": {"requests": {"cpu": "2"}},
                "overhead": {"memory": "100Mi"},
            }
        }
        assert pod_requests(p) == {"cpu": 2000, "memory": GiB + 100 * 2**20}

    def test_malformed_quantities_name_the_field(self) -> None:
        p = {"spec": {"containers": [_container({"cpu": "lots"})]}}
        with pytest.raises(ValueError, match=r"spec\.containers\[0\]\.resources\.requests\[cpu\]"):
            pod_requests(p)


class TestNodeUsage:
    def test_only_running_and_pending_pods_bound_to_a_node_use_it(self) -> None:
        usage = usage_by_node(
            [
                pod("n-0", cpu="1"),
                pod("n-0", cpu="2", phase="Pending"),
                pod("n-0", cpu="4", phase="Succeeded"),
                pod("n-0", cpu="8", phase="Failed"),
                pod(None, cpu="16", phase="Pending"),
            ]
        )
        assert usage == {"n-0": {"cpu": 3000, "pods": 2}}

    def test_free_is_allocatable_minus_used(self) -> None:
        n = NodeInfo.from_k8s(node("n-0", cpu="16", memory="64Gi"), used={"cpu": 4000, "pods": 3})
        assert n.free == {"cpu": 12000, "memory": 64 * GiB, "pods": 107}

    def test_node_readiness_taints_and_cordon_are_read(self) -> None:
        n = NodeInfo.from_k8s(node("n-0", ready=False, unschedulable=True, taints=[GPU_TAINT]))
        assert not n.ready
        assert n.unschedulable
        assert [str(t) for t in n.taints] == ["nvidia.com/gpu=present:NoSchedule"]


@pytest.mark.parametrize(
    "label",
    [
        "nvidia.com/gpu.product",
        "cloud.google.com/gke-accelerator",
        "karpenter.k8s.aws/instance-gpu-name",
        "k8s.amazonaws.com/accelerator",
    ],
)
def test_gpu_model_is_detected_from_each_known_label(label: str) -> None:
    n = NodeInfo.from_k8s(node("n-0", labels={label: "nvidia-tesla-a100"}))
    assert n.gpu_model == "nvidia-tesla-a100"


@pytest.mark.parametrize(
    ("wanted", "model", "matches"),
    [
        ("a100", A100, True),
        ("A100-SXM4-80GB", A100, True),
        (A100, A100, True),
        ("a100", "nvidia-tesla-a100", True),
        ("a10", A100, False),
        ("h100", A100, False),
        ("80gb", H100, True),
        ("a100", None, False),
    ],
)
def test_gpu_models_match_whole_words(wanted: str, model: str | None, matches: bool) -> None:
    assert gpu_model_matches(wanted, model) is matches


class TestShapes:
    def test_identical_nodes_form_one_shape_despite_distinct_hostnames(self) -> None:
        state = ClusterState.from_k8s(info("c"), nodes=[gpu_node(f"a-{i}") for i in range(500)])
        assert len(state.shapes) == 1
        assert state.shapes[0].count == 500
        assert "kubernetes.io/hostname" not in state.shapes[0].labels

    def test_nodes_differing_in_labels_taints_size_or_readiness_are_separate_shapes(self) -> None:
        state = ClusterState.from_k8s(
            info("c"),
            nodes=[
                node("a"),
                node("b", labels={"pool": "x"}),
                node("c", taints=[GPU_TAINT]),
                node("d", cpu="8"),
                node("e", ready=False),
                node("f", unschedulable=True),
                node("g"),
            ],
        )
        assert sorted(s.count for s in state.shapes) == [1, 1, 1, 1, 1, 2]

    def test_busy_nodes_stay_in_their_shape_and_the_frontier_keeps_the_roomiest(self) -> None:
        state = ClusterState.from_k8s(
            info("c"),
            nodes=[node(f"n-{i}") for i in range(4)],
            pods=[pod("n-0", cpu="8"), pod("n-1", cpu="8"), pod("n-2", memory="32Gi")],
        )
        (shape,) = state.shapes
        frontier = sorted((f["cpu"], f["memory"]) for f in shape.frontier)
        assert frontier == [(16000, 64 * GiB)]  # the idle node dominates every other
        assert shape.max_free["cpu"] == 16000
        assert shape.total_free["cpu"] == 16000 * 2 + 8000 * 2

    @given(
        st.lists(
            st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 3)),
            min_size=1,
            max_size=30,
        ),
        st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 3)),
    )
    def test_a_pod_fits_the_frontier_iff_it_fits_some_node(
        self, used: list[tuple[int, int, int]], wanted: tuple[int, int, int]
    ) -> None:
        nodes = [
            NodeInfo(
                f"n-{i}",
                {"cpu": 8000, "memory": 8, "nvidia.com/gpu": 3},
                used={"cpu": c * 1000, "memory": m, "nvidia.com/gpu": g},
            )
            for i, (c, m, g) in enumerate(used)
        ]
        shape = NodeShape.of(nodes)
        want = {"cpu": wanted[0] * 1000, "memory": wanted[1], "nvidia.com/gpu": wanted[2]}

        def fits(free: dict[str, int] | Any) -> bool:
            return all(free.get(k, 0) >= v for k, v in want.items())

        assert any(fits(f) for f in shape.frontier) == any(fits(n.free) for n in nodes)


def test_cost_table_prices_cpu_memory_and_gpus_by_model() -> None:
    table = CostTable(cpu_hour=0.5, memory_gib_hour=0.25, gpu_hour={"a100": 2.0})
    requests = {"cpu": 2000, "memory": 4 * GiB, "nvidia.com/gpu": 2}
    assert table.hourly(requests, A100) == pytest.approx(0.5 * 2 + 0.25 * 4 + 2.0 * 2)
    assert table.hourly(requests, H100) is None
    assert table.hourly({"cpu": 1000}, None) == pytest.approx(0.5)


def test_snapshot_lists_clusters_by_name_and_refuses_duplicates() -> None:
    a, b = ClusterState.build(info("a")), ClusterState.build(info("b"))
    assert [c.name for c in Snapshot.of([b, a]).clusters] == ["a", "b"]
    with pytest.raises(ValueError, match="duplicate"):
        Snapshot.of([a, a])


class TestSnapshotDocuments:
    def test_counted_nodes_expand_to_named_copies(self) -> None:
        doc = {"clusters": [{"name": "c", "nodes": [{"count": 3, **node("gpu")}]}]}
        state = snapshot_from_document(doc).clusters[0]
        assert sorted(n.name for s in state.shapes for n in s.nodes) == ["gpu-0", "gpu-1", "gpu-2"]

    def test_problems_point_at_the_field(self) -> None:
        bad_node = node("n")
        bad_node["status"]["allocatable"]["cpu"] = "many"
        doc = {"clusters": [{"name": "c", "nodes": [bad_node]}]}
        with pytest.raises(SnapshotError, match=r"clusters\[0\]\.nodes\[0\]: status\.allocatable"):
            snapshot_from_document(doc)

    def test_unknown_fields_and_bad_values_are_all_listed(self) -> None:
        doc = {"clusters": [{"name": "Bad", "health": "sideways", "colour": "red"}]}
        with pytest.raises(SnapshotError) as caught:
            snapshot_from_document(doc)
        fields = [p.field for p in caught.value.problems]
        assert fields == ["clusters[0].name", "clusters[0].health", "clusters[0].colour"]
