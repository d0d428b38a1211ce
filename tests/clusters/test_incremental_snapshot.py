"""The cache's incremental account agrees with one rebuilt from scratch (no stack needed).

``ClusterAccount`` keeps node shapes, usage and assumptions up to date delta by delta so
that a placement does not rebuild a cluster. After every generated sequence of informer
deltas (nodes added, changed, removed; pods bound, finished, deleted), assumptions,
settles and expiries, its ``state()`` must equal ``ClusterState.build`` over the same
nodes with usage summed afresh, its choice of node must equal a plain scan of every node,
no assumption may sit on a node overcommitted on what it asks for or stay unplaced while a
node has room, and room may grow only with the account's generation.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dispatcher.clusters.accounting import ClusterAccount, add_amounts, requests_with_slot
from dispatcher.core import ClusterInfo, ClusterState, Health, NodeInfo, Taint, quantity
from dispatcher.core.scheduling import (
    fits,
    matches_node_affinity,
    matches_node_selector,
    untolerated_taints,
)
from dispatcher.core.snapshot import is_terminated
from dispatcher.core.spec import Affinity, Toleration

NODES = [f"node-{i}" for i in range(6)]
GPU_TAINT = Taint("nvidia.com/gpu", "present", "NoSchedule")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SOURCES = ("pods-managed", "pods-other")


def node_info(name: str, kind: int, ready: bool) -> NodeInfo:
    gpus = (0, 4, 8)[kind]
    allocatable = {quantity.CPU: 8000 * (kind + 1), quantity.MEMORY: 2**34, quantity.PODS: 4}
    labels = {"kubernetes.io/hostname": name, "pool": ("cpu", "gpu", "gpu")[kind]}
    if gpus:
        allocatable[quantity.GPU] = gpus
        labels["nvidia.com/gpu.product"] = "NVIDIA-A100-SXM4-80GB"
    return NodeInfo(
        name=name,
        allocatable=allocatable,
        labels=labels,
        taints=(GPU_TAINT,) if gpus else (),
        ready=ready,
    )


def pod(name: str, cpu: int, gpus: int, node: str | None, phase: str, pin: int) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": f"{cpu}m"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"requests": limits, "limits": limits}}],
        "tolerations": [GPU_TOLERATION] if gpus else [],
    }
    if node is not None:
        spec["nodeName"] = node
    if pin == 1:
        spec["nodeSelector"] = {"pool": "gpu"}
    elif pin == 2:  # a per-node constraint: shapes alone cannot decide
        spec["nodeSelector"] = {"kubernetes.io/hostname": NODES[cpu % len(NODES)]}
    return {
        "metadata": {"name": name, "namespace": "dispatch"},
        "spec": spec,
        "status": {"phase": phase},
    }


def scan_choose(nodes: dict[str, NodeInfo], manifest: dict[str, Any]) -> str | None:
    """The node kube-scheduler's default scoring prefers, by visiting every node."""
    spec = manifest.get("spec") or {}
    requests = requests_with_slot(manifest)
    tolerations = [Toleration.model_validate(t) for t in spec.get("tolerations") or ()]
    affinity = spec.get("affinity")
    terms = Affinity.model_validate(affinity).required_terms if affinity else None
    selector = spec.get("nodeSelector") or {}
    best: tuple[float, str] | None = None
    for name, info in sorted(nodes.items()):
        if not info.ready or info.unschedulable:
            continue
        if untolerated_taints(info.taints, tolerations):
            continue
        if not matches_node_selector(selector, info.labels):
            continue
        if not matches_node_affinity(terms, info.labels, name):
            continue
        free = info.free
        if not fits(tuple(requests.items()), free):
            continue
        shares = [
            (free.get(r, 0) - requests.get(r, 0)) / info.allocatable[r]
            for r in (quantity.CPU, quantity.MEMORY)
            if info.allocatable.get(r)
        ]
        score = sum(shares) / len(shares) if shares else 0.0
        if best is None or (-score, name) < (-best[0], best[1]):
            best = (score, name)
    return best[1] if best else None


pod_args = st.tuples(
    st.integers(min_value=1, max_value=12_000),
    st.sampled_from((0, 0, 1, 4, 8)),
    st.sampled_from((0, 0, 0, 1, 2)),
)


class IncrementalAccount(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.info = ClusterInfo(name="c")
        self.account = ClusterAccount(self.info)
        self.nodes: dict[str, NodeInfo] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.now = 0.0
        #: The account's generation and every node's free room when last checked.
        self.seen: tuple[int, dict[str, NodeInfo]] = (0, {})
        # False after an assumption pinned to a node (the manifest's nodeName): it counts
        # there even when it does not fit, until the next event settles.
        self.settled = True

    def _settle(self) -> None:
        self.account.settle()
        self.settled = True

    # ----- informer deltas ------------------------------------------------------------
    @rule(name=st.sampled_from(NODES), kind=st.integers(0, 2), ready=st.booleans())
    def node_listed(self, name: str, kind: int, ready: bool) -> None:
        info = node_info(name, kind, ready)
        self.nodes[name] = info
        if self.account.set_node(info):
            self._settle()

    @rule(name=st.sampled_from(NODES))
    def node_deleted(self, name: str) -> None:
        self.nodes.pop(name, None)
        if self.account.remove_node(name):
            self._settle()

    @rule(
        source=st.sampled_from(SOURCES),
        index=st.integers(0, 7),
        args=pod_args,
        node=st.sampled_from((*NODES, None)),
        phase=st.sampled_from(("Pending", "Running", "Running", "Succeeded")),
    )
    def pod_seen(
        self, source: str, index: int, args: tuple[int, int, int], node: str | None, phase: str
    ) -> None:
        cpu, gpus, _ = args
        name = f"{source}-{index}"
        obj = pod(name, cpu, gpus, node, phase, 0)
        self.pods[(source, name)] = obj
        self._observe(source, name, obj)

    @rule(source=st.sampled_from(SOURCES), index=st.integers(0, 7))
    def pod_deleted(self, source: str, index: int) -> None:
        name = f"{source}-{index}"
        self.pods.pop((source, name), None)
        self._observe(source, name, None)

    def _observe(self, source: str, name: str, obj: dict[str, Any] | None) -> None:
        # As ``ClusterCache._on_pod``: our pod seen bound, finished or gone ends its
        # assumption.
        key = f"dispatch/{name}"
        changed = self.account.count_pod(source, key, obj)
        if source == "pods-managed" and (
            obj is None or (obj["spec"].get("nodeName") or is_terminated(obj))
        ):
            counted = self.account.pod_usage.get((source, key))
            changed = self.account.drop(name, replaced_by=counted) or changed
        if changed:
            self.account.touch(grows=False)
            self._settle()

    # ----- assumptions ----------------------------------------------------------------
    @rule(index=st.integers(0, 7), args=pod_args, named=st.sampled_from((*NODES, None, None)))
    def assumed(self, index: int, args: tuple[int, int, int], named: str | None) -> None:
        cpu, gpus, pin = args
        manifest = pod(f"pods-managed-{index}", cpu, gpus, named, "Pending", pin)
        # ``assume`` first drops an earlier assumption of the same pod.
        expected = named or scan_choose(self.fresh_nodes(without=f"pods-managed-{index}"), manifest)
        node = self.account.assume(manifest["metadata"]["name"], "dispatch", manifest, self.now + 5)
        assert node == expected
        self.settled = self.settled and named is None

    @rule(index=st.integers(0, 7))
    def forgotten(self, index: int) -> None:
        if self.account.drop(f"pods-managed-{index}"):
            self.account.touch()
            self._settle()

    @rule(seconds=st.sampled_from((0.5, 2.0, 6.0)))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        if self.account.expire(self.now):
            self.account.touch()
            self._settle()
        assert all(a.expires > self.now for a in self.account.assumed.values())

    @rule(args=pod_args)
    def choice_matches_a_scan(self, args: tuple[int, int, int]) -> None:
        cpu, gpus, pin = args
        manifest = pod("probe", cpu, gpus, None, "Pending", pin)
        chosen = self.account.choose_node(manifest, requests_with_slot(manifest))
        assert chosen == scan_choose(self.fresh_nodes(), manifest)

    # ----- the account against a rebuild ----------------------------------------------
    def fresh_nodes(self, without: str | None = None) -> dict[str, NodeInfo]:
        """Every node with its usage summed from scratch: pods, then assumptions (but the
        one named ``without``)."""
        used: dict[str, dict[str, int]] = {}
        for obj in self.pods.values():
            node = obj["spec"].get("nodeName")
            if node and not is_terminated(obj):
                add_amounts(used.setdefault(node, {}), requests_with_slot(obj))
        for assumption in self.account.assumed.values():
            if assumption.node is not None and assumption.name != without:
                add_amounts(used.setdefault(assumption.node, {}), assumption.requests)
        return {
            name: NodeInfo(
                name=info.name,
                allocatable=info.allocatable,
                used=used.get(name, {}),
                labels=info.labels,
                taints=info.taints,
                ready=info.ready,
                unschedulable=info.unschedulable,
            )
            for name, info in self.nodes.items()
        }

    @invariant()
    def state_equals_a_rebuild(self) -> None:
        rebuilt = ClusterState.build(
            self.info,
            health=Health.UP,
            nodes=self.fresh_nodes().values(),
            queue_depth=sum(1 for a in self.account.assumed.values() if a.node is None),
        )
        assert self.account.state(Health.UP, None, None) == rebuilt

    @invariant()
    def room_grows_only_with_the_generation(self) -> None:
        # Routing keeps a waiting task's answer while the generation stays: nothing may
        # have freed room, or changed a node, meanwhile.
        fresh = self.fresh_nodes()
        generation, before = self.seen
        if self.account.generation == generation:
            assert fresh.keys() == before.keys()
            for name, info in fresh.items():
                old = before[name]
                assert (info.allocatable, info.labels, info.taints, info.ready) == (
                    old.allocatable,
                    old.labels,
                    old.taints,
                    old.ready,
                ), name
                free, was = info.free, old.free
                assert all(free.get(r, 0) <= was.get(r, 0) for r in {*free, *was}), name
        self.seen = (self.account.generation, fresh)

    @invariant()
    def assumptions_sit_where_they_fit(self) -> None:
        if not self.settled:
            return
        fresh = self.fresh_nodes()
        for assumption in self.account.assumed.values():
            if assumption.node is None:
                assert scan_choose(fresh, dict(assumption.pod)) is None, assumption.name
            else:
                info = fresh.get(assumption.node)
                assert info is not None, assumption.name
                # As the scheduler judges: on what the pod asks for (someone else's pod may
                # overcommit the node on a resource this one does not use).
                free = info.free
                assert all(free.get(r, 0) >= 0 for r in assumption.requests), assumption.name


IncrementalAccount.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
test_incremental_account_agrees_with_a_rebuild = IncrementalAccount.TestCase
