"""Routing never places a pod where the scheduler would refuse it, and misses no cluster
where it would accept it; WAIT and REJECT follow whether any node could ever take it.

The oracle is ``reference_scheduler``: a naive node-by-node model of kube-scheduler's
filters over the raw node and pod dicts and the pod manifest ``podspec`` builds.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.core import (
    ClusterRole,
    ClusterState,
    Decision,
    Health,
    Placement,
    Reason,
    Snapshot,
    TaskSpec,
    Verdict,
    build_pod,
    parse_task_spec,
    placement_for,
    route,
)

from . import factories
from .reference_scheduler import accepting_nodes

TAINTS = [
    factories.GPU_TAINT,
    {"key": "dedicated", "value": "x", "effect": "NoExecute"},
    {"key": "soft", "value": "", "effect": "PreferNoSchedule"},
    {"key": "pool-b", "effect": "NoSchedule"},
]
TOLERATIONS = [
    {"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoExecute"},
    {"key": "pool-b", "operator": "Exists"},
    {"operator": "Exists"},
    factories.GPU_TOLERATION,
]
MODELS = {"a100": factories.A100, "h100": factories.H100}
NOW = datetime(2025, 1, 1, tzinfo=UTC)


@st.composite
def raw_nodes(draw: st.DrawFn, prefix: str) -> list[dict[str, Any]]:
    nodes = []
    for index in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["cpu", "a100", "h100"]))
        nodes.append(
            factories.node(
                f"{prefix}-n{index}",
                cpu=draw(st.sampled_from(["4", "16", "96"])),
                memory=draw(st.sampled_from(["8Gi", "64Gi", "1000Gi"])),
                gpus=0 if kind == "cpu" else draw(st.sampled_from([4, 8])),
                gpu_model=MODELS.get(kind),
                pods=draw(st.sampled_from(["2", "110"])),
                labels={
                    "pool": draw(st.sampled_from(["a", "b"])),
                    "rank": draw(st.sampled_from(["1", "5", "9"])),
                },
                taints=draw(
                    st.lists(st.sampled_from(TAINTS), max_size=2, unique_by=lambda t: t["key"])
                ),
                ready=draw(st.sampled_from([True, True, True, False])),
                unschedulable=draw(st.sampled_from([False, False, False, True])),
            )
        )
    return nodes


@st.composite
def raw_pods(draw: st.DrawFn, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = []
    for node in nodes:
        for index in range(draw(st.integers(0, 3))):
            pods.append(
                factories.pod(
                    node["metadata"]["name"],
                    name=f"{node['metadata']['name']}-p{index}",
                    cpu=draw(st.sampled_from([None, "500m", "4", "12"])),
                    memory=draw(st.sampled_from([None, "1Gi", "32Gi"])),
                    gpus=draw(st.sampled_from([0, 2, 4, 8])),
                    phase=draw(st.sampled_from(["Running", "Pending", "Succeeded", "Failed"])),
                )
            )
    return pods


@st.composite
def clusters(draw: st.DrawFn) -> list[tuple[ClusterState, list[Any], list[Any]]]:
    names = draw(
        st.lists(st.sampled_from(["c0", "c1", "c2", "c3"]), min_size=1, max_size=4, unique=True)
    )
    in_plane = draw(st.sampled_from([None, *names]))
    out = []
    for name in names:
        nodes = draw(raw_nodes(name))
        pods = draw(raw_pods(nodes))
        defaults: dict[str, Any] = {
            "gpu_tolerations": draw(st.sampled_from([[], [factories.GPU_TOLERATION]])),
            "tolerations": draw(st.sampled_from([[], [TOLERATIONS[0]]])),
            "node_selector": draw(st.sampled_from([{}, {"pool": "a"}])),
        }
        info = factories.info(
            name,
            role=ClusterRole.IN_PLANE if name == in_plane else ClusterRole.EXTERNAL,
            region=draw(st.sampled_from(["us", "eu"])),
            cpu_hour=draw(st.sampled_from([0.01, 0.05])),
            gpu_prices={factories.A100: 2.0, factories.H100: 4.0},
            default_gpu_toleration=False,
            **defaults,
        )
        health = draw(st.sampled_from([Health.UP, Health.UP, Health.DEGRADED, Health.DOWN]))
        out.append((factories.cluster(info, nodes, pods, health), nodes, pods))
    return out


@st.composite
def affinities(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    expression = st.one_of(
        st.builds(
            lambda key, op, values: {"key": key, "operator": op, "values": values},
            st.sampled_from(["pool", "rank", "zone", "kubernetes.io/hostname"]),
            st.sampled_from(["In", "NotIn"]),
            st.lists(
                st.sampled_from(["a", "b", "1", "9", "c0-n0", "c1-n1"]),
                min_size=1,
                max_size=2,
                unique=True,
            ),
        ),
        st.builds(
            lambda key, op: {"key": key, "operator": op},
            st.sampled_from(["pool", "zone"]),
            st.sampled_from(["Exists", "DoesNotExist"]),
        ),
        st.builds(
            lambda op, value: {"key": "rank", "operator": op, "values": [value]},
            st.sampled_from(["Gt", "Lt"]),
            st.sampled_from(["2", "6"]),
        ),
    )
    terms = draw(
        st.lists(
            st.lists(expression, min_size=1, max_size=2).map(lambda e: {"matchExpressions": e}),
            min_size=1,
            max_size=2,
        )
    )
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }


@st.composite
def tasks(draw: st.DrawFn) -> TaskSpec:
    gpus = draw(st.sampled_from([0, 0, 1, 4, 8, 16]))
    limits: dict[str, str] = {}
    if gpus and draw(st.booleans()):
        limits["nvidia.com/gpu"] = str(gpus)
    requirements: dict[str, Any] = {}
    if gpus and "nvidia.com/gpu" not in limits:
        requirements["gpus"] = gpus
    if gpus:
        model = draw(st.sampled_from([None, "a100", "H100-80GB-HBM3"]))
        if model:
            requirements["gpu_model"] = model
    requirements["region"] = draw(st.sampled_from([None, "us", "eu"]))
    allowed = draw(st.sampled_from([None, ["c0", "c1"], ["c2"]]))
    if allowed is not None:
        requirements["allowed_clusters"] = allowed
    spec: dict[str, Any] = {
        "image": "busybox",
        "container_resources": {
            "requests": {
                "cpu": draw(st.sampled_from(["100m", "2", "8", "64"])),
                "memory": draw(st.sampled_from(["256Mi", "16Gi", "512Gi"])),
            },
            "limits": limits,
        },
        "node_selector": draw(st.sampled_from([{}, {"pool": "a"}, {"pool": "b"}])),
        "tolerations": draw(st.lists(st.sampled_from(TOLERATIONS), max_size=2, unique_by=str)),
        "requirements": requirements,
    }
    affinity = draw(affinities())
    if affinity is not None:
        spec["affinity"] = affinity
    return parse_task_spec(spec)


def _pod_for(task: TaskSpec, placement: Placement) -> dict[str, Any]:
    return build_pod(task, placement, job_id="job-1", attempt=0, submitted_at=NOW)


def _cluster_filters_pass(task: TaskSpec, state: ClusterState) -> bool:
    wanted = task.requirements
    if wanted.allowed_clusters is not None and state.name not in wanted.allowed_clusters:
        return False
    if wanted.region and state.info.labels.get("topology.kubernetes.io/region") != wanted.region:
        return False
    unknown = state.health is Health.DOWN and not state.shapes
    if wanted.gpu_model and not placement_for(task, state).gpu_model_labels and not unknown:
        # No node of the model: the pod could not even say where to go. (A down cluster
        # whose nodes were never seen may have them: routing waits for it.)
        return False
    pinned = state.info.pod_defaults.node_selector
    return all(pinned.get(key, value) == value for key, value in task.node_selector.items())


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(world=clusters(), task=tasks())
def test_router_never_places_where_the_scheduler_would_refuse(world: Any, task: TaskSpec) -> None:
    decision = route(task, Snapshot.of(state for state, _, _ in world))
    for state, nodes, pods in world:
        verdict = decision.explain(state.name)
        assert verdict is not None
        if verdict.verdict is Verdict.PLACE:
            assert state.health is not Health.DOWN
            assert _cluster_filters_pass(task, state)
            pod = _pod_for(task, placement_for(task, state))
            assert accepting_nodes(nodes, pods, pod), (state.name, verdict)


@PROPERTY
@given(world=clusters(), task=tasks())
def test_router_places_wherever_the_scheduler_would_accept(world: Any, task: TaskSpec) -> None:
    decision = route(task, Snapshot.of(state for state, _, _ in world))
    for state, nodes, pods in world:
        if state.health is Health.DOWN or not _cluster_filters_pass(task, state):
            continue
        pod = _pod_for(task, placement_for(task, state))
        if accepting_nodes(nodes, pods, pod):
            verdict = decision.explain(state.name)
            assert verdict is not None
            assert verdict.verdict is Verdict.PLACE, (state.name, verdict)


@PROPERTY
@given(world=clusters(), task=tasks())
def test_wait_means_some_node_could_take_it_later_and_reject_means_none_ever(
    world: Any, task: TaskSpec
) -> None:
    decision = route(task, Snapshot.of(state for state, _, _ in world))
    for state, nodes, pods in world:
        verdict = decision.explain(state.name)
        assert verdict is not None
        if not _cluster_filters_pass(task, state):
            assert verdict.verdict is Verdict.REJECT
            continue
        pod = _pod_for(task, placement_for(task, state))
        ever = bool(accepting_nodes(nodes, pods, pod, ever=True))
        if verdict.verdict is Verdict.REJECT:
            assert not ever, (state.name, verdict)
        elif state.health is Health.DOWN and not nodes:
            # A down cluster with no known nodes (never listed) is waited for.
            assert verdict.reason is Reason.CLUSTER_DOWN, (state.name, verdict)
        else:
            assert ever, (state.name, verdict)
        if verdict.verdict is Verdict.WAIT and state.health is not Health.DOWN:
            assert not accepting_nodes(nodes, pods, pod), (state.name, verdict)


def _comparable(decision: Decision) -> Any:
    return decision.verdict, decision.cluster, decision.clusters


@PROPERTY
@given(world=clusters(), task=tasks(), seed=st.integers(0, 1000))
def test_same_inputs_give_the_same_decision_in_any_order(
    world: Any, task: TaskSpec, seed: int
) -> None:
    first = route(task, Snapshot.of(state for state, _, _ in world))
    again = route(task, Snapshot.of(state for state, _, _ in world))
    shuffler = random.Random(seed)
    reordered = []
    for state, nodes, pods in reversed(world):
        shuffled = list(nodes)
        shuffler.shuffle(shuffled)
        reordered.append(factories.cluster(state.info, shuffled, pods, state.health))
    shuffled_decision = route(task, Snapshot.of(reordered))
    assert _comparable(first) == _comparable(again) == _comparable(shuffled_decision)


@PROPERTY
@given(world=clusters(), task=tasks())
def test_every_cluster_is_explained_once_and_the_verdict_follows(
    world: Any, task: TaskSpec
) -> None:
    decision = route(task, Snapshot.of(state for state, _, _ in world))
    assert sorted(v.cluster for v in decision.clusters) == sorted(s.name for s, _, _ in world)
    assert all(v.message for v in decision.clusters)
    verdicts = {v.verdict for v in decision.clusters}
    if Verdict.PLACE in verdicts:
        assert decision.verdict is Verdict.PLACE
        assert decision.clusters[0].cluster == decision.cluster
        assert decision.placement is not None
        assert decision.placement.cluster == decision.cluster
    elif Verdict.WAIT in verdicts:
        assert decision.verdict is Verdict.WAIT
        assert decision.cluster is None
    else:
        assert decision.verdict is Verdict.REJECT
        assert decision.cluster is None
