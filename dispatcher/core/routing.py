"""Where a task should run: ``route(task, snapshot, policy) -> Decision``; pure, no I/O.

First the task's cluster hints (KubernetesPodOperator's ``in_cluster``,
``cluster_context``, ``config_file``, ``kubernetes_conn_id``) are read through the
policy: one that stands for clusters becomes an allow-list; one the policy does not know
restricts nothing and is named in the decision's notes. Then, for each cluster, in order:

1. cluster filters: allow-lists (the tenant's, the task's and its hint's), the cluster's
   Pod Security Standard level (``podsecurity``: a task breaking ``restricted`` goes to
   ``baseline`` clusters only), cluster labels (region), node-selector conflicts with the cluster's
   pod defaults; then a cluster whose credentials were refused (``Health.REFUSED``) can
   run nothing until someone fixes them (REJECT, "refused: <reason>"); then the task's
   dependencies (``dependencies``: Secrets, ConfigMaps, PVCs, the ServiceAccount) must be
   in the cluster's task namespace, with the keys the task reads, or be copyable there by the
   cluster's copy policy (``copies``: from the in-plane task namespace, or Vault; explained
   as "would be copied from ..."), else REJECT naming the object; WAIT while the cluster's
   (or the copy source's) view of them is not listed;
2. static node filters, once per node shape (per node only when the task names a per-node
   label): GPU model, node selector, required node affinity, taints, and whether the task
   fits an *empty* node of the shape. No shape passing means the cluster can never run the
   task (REJECT), and the furthest filter reached explains why;
3. the cost cap (price from the cluster's cost table);
4. health: a down cluster that could run the task makes it WAIT;
5. free room now, on ready, schedulable nodes (the shape's frontier): PLACE or WAIT.

Clusters where the task fits now are ranked by the policy: healthy before degraded,
in-plane first when preferred, then by the strategy (cost, least-loaded, bin-pack or a
weighted blend), then by name, so equal inputs give equal decisions.

The resulting ``Decision`` is PLACE (a cluster and the node shape it fits), WAIT (some
cluster could run it later) or REJECT (none ever could), and explains every cluster with a
machine-readable ``Reason`` and a message a DAG author understands.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from dispatcher.core import quantity
from dispatcher.core.copies import Source, registries_for, resolve
from dispatcher.core.dependencies import (
    DependencyKind,
    DependencyReport,
    NamespaceView,
    Reference,
    check,
    dependencies,
)
from dispatcher.core.names import DNSLabel
from dispatcher.core.podsecurity import Level, violations
from dispatcher.core.podspec import Placement
from dispatcher.core.scheduling import (
    PodConstraints,
    fits,
    matches_node_affinity,
    matches_node_selector,
    pod_constraints,
    pod_namespace,
    untolerated_taints,
)
from dispatcher.core.snapshot import (
    ClusterInfo,
    ClusterRole,
    ClusterState,
    Health,
    NodeInfo,
    NodeShape,
    Snapshot,
    Taint,
    gpu_model_matches,
)
from dispatcher.core.spec import PodDefaults, TaskSpec
from dispatcher.core.tenancy import ClusterAllowance

__all__ = [
    "REGION_LABEL",
    "ClusterVerdict",
    "Decision",
    "Reason",
    "RoutingPolicy",
    "ScoreWeights",
    "Strategy",
    "Verdict",
    "feasible_nodes",
    "placement_for",
    "route",
]

REGION_LABEL = "topology.kubernetes.io/region"


class Verdict(StrEnum):
    """For a decision: what to do. For one cluster: what it can do for the task."""

    PLACE = "place"
    WAIT = "wait"
    REJECT = "reject"


class Reason(StrEnum):
    """Why a cluster got its verdict; stable codes for metrics, API and tests."""

    # PLACE
    PLACED = "placed"
    OUTRANKED = "outranked"
    # WAIT: could run the task, not now
    CLUSTER_DOWN = "cluster-down"
    CREDENTIALS_UNAVAILABLE = "credentials-unavailable"
    NODES_NOT_READY = "nodes-not-ready"
    #: The cluster's view of the task namespace's Secrets, ConfigMaps... is not listed.
    DEPENDENCIES_UNKNOWN = "dependencies-unknown"
    INSUFFICIENT_FREE = "insufficient-free-resources"
    # REJECT: can never run the task as configured
    NOT_ALLOWED = "not-allowed"
    POD_SECURITY = "pod-security"
    CLUSTER_LABELS_MISMATCH = "cluster-labels-mismatch"
    NO_NODES = "no-nodes"
    GPU_MODEL_UNAVAILABLE = "gpu-model-unavailable"
    NODE_SELECTOR_MISMATCH = "node-selector-mismatch"
    NODE_AFFINITY_MISMATCH = "node-affinity-mismatch"
    UNTOLERATED_TAINT = "untolerated-taint"
    INSUFFICIENT_CAPACITY = "insufficient-capacity"
    COST_UNKNOWN = "cost-unknown"
    OVER_COST_CAP = "over-cost-cap"
    #: Its credentials break our rules (``Health.REFUSED``); the message says which.
    CLUSTER_REFUSED = "cluster-refused"
    #: A Secret, ConfigMap, PVC or ServiceAccount (or a key) the pod needs is not there.
    DEPENDENCY_MISSING = "dependency-missing"


class Strategy(StrEnum):
    #: Cheapest first; more headroom breaks ties.
    COST = "cost"
    #: Fewest tasks queued for the cluster, then most headroom (free share of the resources
    #: asked for), then cost.
    LEAST_LOADED = "least-loaded"
    #: Least headroom first, to keep other clusters' nodes empty; cost breaks ties.
    BIN_PACK = "bin-pack"
    #: ``weights.cost * cost / max cost + weights.headroom * (1 - headroom)``, lowest first.
    WEIGHTED = "weighted"


class ScoreWeights(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cost: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    headroom: float = Field(default=1.0, ge=0, allow_inf_nan=False)


def _cluster_names(value: Any) -> Any:
    # ``{gpu_k8s: gpu-a100}`` reads better than ``{gpu_k8s: [gpu-a100]}``.
    if isinstance(value, Mapping):
        return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
    return value


class RoutingPolicy(BaseModel):
    """How to choose among clusters where a task fits now, and how to read the cluster
    hints of tasks written for KubernetesPodOperator."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Run in the dispatcher's own cluster when the task fits there.
    prefer_in_plane: bool = True
    strategy: Strategy = Strategy.COST
    #: Used by the ``weighted`` strategy only.
    weights: ScoreWeights = Field(default_factory=ScoreWeights)
    #: A DAG's ``kubernetes_conn_id``, ``cluster_context`` or ``config_file`` value -> the
    #: clusters it stands for (``{gpu_k8s: gpu-a100}``); a task naming one runs only there.
    #: Values not listed restrict nothing. Connections themselves are never read.
    airflow_connections: Annotated[
        dict[str, tuple[DNSLabel, ...]], BeforeValidator(_cluster_names)
    ] = Field(default_factory=dict)
    #: What ``in_cluster=True`` asks for: the in-plane cluster, or no preference (when
    #: DAGs set it only because Airflow's workers ran in Kubernetes).
    in_cluster: Literal["in-plane", "no-preference"] = "in-plane"


@dataclass(frozen=True, slots=True)
class ClusterVerdict:
    """What one cluster can do for the task, and why, in words and as a code."""

    cluster: str
    verdict: Verdict
    reason: Reason
    message: str
    #: Hourly cost of the task there, when known.
    hourly_cost: float | None = None
    #: A node shape where the task fits now (PLACE verdicts only).
    shape: NodeShape | None = field(default=None, repr=False, compare=False)
    #: Which of the task's dependencies the cluster has, lacks or cannot tell; ``None``
    #: when they were not checked (switched off, or rejected before the check).
    dependencies: DependencyReport | None = None

    def __str__(self) -> str:
        return f"{self.cluster}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "verdict": self.verdict.value,
            "reason": self.reason.value,
            "message": self.message,
            "hourly_cost": self.hourly_cost,
            "dependencies": None if self.dependencies is None else self.dependencies.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of routing one task, with every cluster explained.

    ``clusters`` lists the chosen cluster first, then the others that fit now by rank,
    then those that could run the task later, then the rest, each group by name.
    """

    verdict: Verdict
    clusters: tuple[ClusterVerdict, ...]
    #: The chosen cluster (PLACE only).
    cluster: str | None = None
    #: A node shape of the chosen cluster the task fits now (PLACE only).
    shape: NodeShape | None = field(default=None, repr=False, compare=False)
    hourly_cost: float | None = None
    #: What ``podspec.build_pod`` needs to build the pod for the chosen cluster.
    placement: Placement | None = None
    #: How the task's cluster hints were read, when one restricted nothing or was not used.
    notes: tuple[str, ...] = ()

    def explain(self, cluster: str) -> ClusterVerdict | None:
        for verdict in self.clusters:
            if verdict.cluster == cluster:
                return verdict
        return None

    def message(self) -> str:
        """One paragraph for the DAG author."""
        notes = "".join(f"; note: {note}" for note in self.notes)
        return self._verdict_message() + notes

    def _verdict_message(self) -> str:
        if self.verdict is Verdict.PLACE:
            cost = _money(self.hourly_cost)
            where = f" on {self.shape.describe()}" if self.shape else ""
            return f"placed on {self.cluster}{where}" + (f", {cost}" if cost else "")
        if not self.clusters:
            return "no clusters are configured"
        if self.verdict is Verdict.WAIT:
            waiting = [str(c) for c in self.clusters if c.verdict is Verdict.WAIT]
            return "no cluster can run the task now; waiting for " + "; ".join(waiting)
        return "no cluster can ever run this task: " + "; ".join(str(c) for c in self.clusters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "cluster": self.cluster,
            "hourly_cost": self.hourly_cost,
            "message": self.message(),
            "clusters": [c.to_dict() for c in self.clusters],
            "notes": list(self.notes),
        }


class _Stage(IntEnum):
    """Static node filters in the order they run; the furthest reached explains a reject."""

    GPU_MODEL = 0
    NODE_SELECTOR = 1
    NODE_AFFINITY = 2
    TAINTS = 3
    CAPACITY = 4
    PASSED = 5


_STAGE_REASON = {
    _Stage.GPU_MODEL: Reason.GPU_MODEL_UNAVAILABLE,
    _Stage.NODE_SELECTOR: Reason.NODE_SELECTOR_MISMATCH,
    _Stage.NODE_AFFINITY: Reason.NODE_AFFINITY_MISMATCH,
    _Stage.TAINTS: Reason.UNTOLERATED_TAINT,
    _Stage.CAPACITY: Reason.INSUFFICIENT_CAPACITY,
}


@dataclass(frozen=True, slots=True)
class _Feasible:
    """A shape that could run the task, and which of its nodes (``None``: all of them)."""

    shape: NodeShape
    nodes: tuple[NodeInfo, ...] | None


@dataclass(slots=True)
class _Static:
    feasible: list[_Feasible]
    furthest: _Stage = _Stage.GPU_MODEL
    # What the shapes stopped at the furthest stage had, for the message.
    gpu_models: set[str] = field(default_factory=set)
    taints: set[Taint] = field(default_factory=set)
    largest: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Candidate:
    state: ClusterState
    shape: NodeShape
    cost: float | None
    headroom: float
    dependencies: DependencyReport | None = None


def _money(cost: float | None) -> str:
    return "" if cost is None else f"${cost:,.2f}/h"


def _describe_requests(requests: Iterable[tuple[str, int]]) -> str:
    parts = [quantity.describe_amount(n, a) for n, a in requests if n != quantity.PODS]
    return ", ".join(parts) or "a pod slot"


def _shape_stage(
    shape: NodeShape,
    wanted_model: str | None,
    constraints: PodConstraints,
    per_node: bool,
    requests: tuple[tuple[str, int], ...],
) -> tuple[_Stage, tuple[NodeInfo, ...] | None]:
    """How far a shape gets through the static filters, and which of its nodes pass
    (``None``: all of them; only per-node constraints pick nodes)."""
    if wanted_model and not any(
        gpu_model_matches(wanted_model, value) for _, value in shape.gpu_labels
    ):
        return _Stage.GPU_MODEL, None
    nodes: tuple[NodeInfo, ...] | None = None
    selector, terms = constraints.node_selector, constraints.required_terms
    if per_node:
        selected = [n for n in shape.nodes if matches_node_selector(selector, n.labels)]
        nodes = tuple(n for n in selected if matches_node_affinity(terms, n.labels, n.name))
        if not nodes:
            return (_Stage.NODE_AFFINITY if selected else _Stage.NODE_SELECTOR), None
    else:
        if selector and not matches_node_selector(selector, shape.labels):
            return _Stage.NODE_SELECTOR, None
        if terms is not None and not matches_node_affinity(terms, shape.labels):
            return _Stage.NODE_AFFINITY, None
    if shape.taints and untolerated_taints(shape.taints, constraints.tolerations):
        return _Stage.TAINTS, None
    if not fits(requests, shape.allocatable):
        return _Stage.CAPACITY, None
    return _Stage.PASSED, nodes


def _static_filters(
    task: TaskSpec,
    state: ClusterState,
    constraints: PodConstraints,
    requests: tuple[tuple[str, int], ...],
) -> _Static:
    wanted_model = task.requirements.gpu_model
    per_node = constraints.per_node
    stages = [
        (shape, *_shape_stage(shape, wanted_model, constraints, per_node, requests))
        for shape in state.shapes
    ]
    result = _Static(
        feasible=[
            _Feasible(shape, nodes) for shape, stage, nodes in stages if stage is _Stage.PASSED
        ]
    )
    if result.feasible:
        return result
    # Nothing passes: describe what stopped the shapes that got furthest.
    result.furthest = max(stage for _, stage, _ in stages)
    for shape, stage, _ in stages:
        if stage != result.furthest:
            continue
        if stage is _Stage.GPU_MODEL and shape.gpu_model:
            result.gpu_models.add(shape.gpu_model)
        elif stage is _Stage.TAINTS:
            result.taints.update(untolerated_taints(shape.taints, constraints.tolerations))
        elif stage is _Stage.CAPACITY:
            for name, _ in requests:
                have = shape.allocatable.get(name, 0)
                result.largest[name] = max(result.largest.get(name, 0), have)
    return result


def feasible_nodes(task: TaskSpec, state: ClusterState) -> tuple[NodeInfo, ...]:
    """The ready, schedulable nodes of ``state`` that could run ``task`` once empty
    enough: the static node filters pass and the task fits their allocatable. Cluster
    filters (allow-lists, pod security, labels) are not checked here; a ``Decision``
    says whether the cluster could run the task at all."""
    if not state.shapes:  # no node (yet), or unreachable: nothing to filter
        return ()
    constraints = pod_constraints(task, state.info.pod_defaults)
    requests = tuple(sorted(task.requests.items()))
    static = _static_filters(task, state, constraints, requests)
    return tuple(
        node
        for candidate in static.feasible
        if candidate.shape.schedulable
        for node in (candidate.nodes if candidate.nodes is not None else candidate.shape.nodes)
    )


def _reject_message(
    task: TaskSpec,
    static: _Static,
    constraints: PodConstraints,
    requests: tuple[tuple[str, int], ...],
) -> str:
    stage = static.furthest
    if stage is _Stage.GPU_MODEL:
        wanted = task.requirements.gpu_model
        if not static.gpu_models:
            return f"no GPU nodes here (the task wants {wanted})"
        return f"no {wanted} GPUs here, only {', '.join(sorted(static.gpu_models))}"
    if stage is _Stage.NODE_SELECTOR:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(constraints.node_selector.items()))
        return f"no node matches node selector {wanted}"
    if stage is _Stage.NODE_AFFINITY:
        return "no node matches the required node affinity"
    if stage is _Stage.TAINTS:
        taints = ", ".join(sorted(str(t) for t in static.taints))
        return f"nodes are tainted {taints}, which the task does not tolerate"
    short = [(name, amount) for name, amount in requests if static.largest.get(name, 0) < amount]
    if short:
        return "; ".join(
            f"needs {quantity.describe_amount(name, amount)} on one node, largest node has "
            f"{static.largest.get(name, 0)}"
            if name in (quantity.GPU, quantity.PODS)
            else f"needs {quantity.describe_amount(name, amount)} on one node, largest node "
            f"has {quantity.describe_amount(name, static.largest.get(name, 0))}"
            for name, amount in short
        )
    return f"needs {_describe_requests(requests)} on one node; no node has all of it"


@dataclass(frozen=True, slots=True)
class _Hint:
    """The task's cluster hints as the policy reads them."""

    #: The clusters a hint stands for; ``None``: no restriction.
    allowed: frozenset[str] | None = None
    #: Why only ``allowed`` (for the clusters passed over).
    why: str = ""
    notes: tuple[str, ...] = ()


#: Most specific first: KPO applies a cluster_context or config_file over the connection's.
_HINTS_BY_PRECEDENCE = ("cluster_context", "config_file", "kubernetes_conn_id")


def _cluster_hint(task: TaskSpec, snapshot: Snapshot, policy: RoutingPolicy) -> _Hint:
    """The allow-list the task's cluster hints stand for, and notes on the rest.

    ``in_cluster=True`` (unless the policy says "no-preference") stands for the in-plane
    cluster and, as in KubernetesPodOperator, makes the other hints unused. Otherwise the
    most specific hint the policy's table knows decides; the others are noted.
    """
    hints = task.requirements.cluster_hints
    given = [(n, v) for n in _HINTS_BY_PRECEDENCE if (v := getattr(hints, n)) is not None]
    notes: list[str] = []
    if hints.in_cluster:
        if policy.in_cluster == "in-plane":
            in_plane = sorted(
                c.name for c in snapshot.clusters if c.info.role is ClusterRole.IN_PLANE
            )
            notes.extend(
                f"{name} {value!r} not used: in_cluster=True runs the task in-plane"
                for name, value in given
            )
            if in_plane:
                why = f"in_cluster=True asks for the in-plane cluster ({', '.join(in_plane)})"
                return _Hint(frozenset(in_plane), why, tuple(notes))
            notes.append("in_cluster=True: no in-plane cluster is configured; not restricting")
            return _Hint(notes=tuple(notes))
        notes.append("in_cluster=True is no preference here (routing.in_cluster)")
    decided: tuple[str, _Hint] | None = None
    for name, value in given:
        clusters = policy.airflow_connections.get(value)
        if decided is not None:
            notes.append(f"{name} {value!r} not used: {decided[0]} decides")
        elif clusters is None:
            notes.append(f"{name} {value!r} is not in routing.airflow_connections; not restricting")
        else:
            why = (
                f"{name} {value!r} stands for {', '.join(clusters) or 'no cluster'} "
                "(routing.airflow_connections)"
            )
            decided = (name, _Hint(frozenset(clusters), why))
    if decided is None:
        return _Hint(notes=tuple(notes))
    return _Hint(decided[1].allowed, decided[1].why, tuple(notes))


#: Fields named in a pod-security refusal; the rest are counted.
_SHOWN_FIELDS = 5


def _cluster_filters(
    task: TaskSpec,
    state: ClusterState,
    constraints: PodConstraints,
    hint: _Hint,
    allowance: ClusterAllowance | None,
) -> tuple[Reason, str] | None:
    wanted = task.requirements
    if allowance is not None and state.name not in allowance.clusters:
        return Reason.NOT_ALLOWED, f"not allowed: {allowance.why}"
    if wanted.allowed_clusters is not None and state.name not in wanted.allowed_clusters:
        allowed = ", ".join(wanted.allowed_clusters) or "none"
        return Reason.NOT_ALLOWED, f"not in the task's allowed_clusters ({allowed})"
    if hint.allowed is not None and state.name not in hint.allowed:
        return Reason.NOT_ALLOWED, f"not what the task asks for: {hint.why}"
    level = state.info.pod_security.level
    if level is not Level.BASELINE:
        broken = violations(task, level)
        if broken:
            shown = ", ".join(problem.field for problem in broken[:_SHOWN_FIELDS])
            more = f" and {len(broken) - _SHOWN_FIELDS} more" if len(broken) > _SHOWN_FIELDS else ""
            return Reason.POD_SECURITY, (
                f"enforces the {level} Pod Security Standard, which the task breaks at "
                f"{shown}{more}"
            )
    selector = dict(wanted.cluster_selector)
    if wanted.region is not None:
        selector[REGION_LABEL] = wanted.region
    for key, value in sorted(selector.items()):
        have = state.info.labels.get(key)
        if have != value:
            shown = "unset" if have is None else f"{have!r}"
            return Reason.CLUSTER_LABELS_MISMATCH, f"{key} is {shown}, the task wants {value!r}"
    if constraints.selector_conflicts:
        key = constraints.selector_conflicts[0]
        defaults = state.info.pod_defaults.node_selector
        return Reason.NODE_SELECTOR_MISMATCH, (
            f"the task selects {key}={task.node_selector[key]}, "
            f"but this cluster pins {key}={defaults[key]}"
        )
    return None


def _gpu_models(feasible: list[_Feasible]) -> list[str | None]:
    return sorted({f.shape.gpu_model for f in feasible}, key=lambda m: m or "")


def _hourly_cost(
    state: ClusterState, requests: Mapping[str, int], feasible: list[_Feasible]
) -> float | None:
    # The scheduler picks the node, so price the task at the dearest shape it could land on.
    costs = [state.info.cost.hourly(requests, model) for model in _gpu_models(feasible)]
    if not costs or any(c is None for c in costs):
        return None
    return max(c for c in costs if c is not None)


def _fits_now(feasible: _Feasible, requests: tuple[tuple[str, int], ...]) -> bool:
    shape = feasible.shape
    if not shape.schedulable or not fits(requests, shape.max_free):
        return False
    if feasible.nodes is None:
        return any(fits(requests, free) for free in shape.frontier)
    return any(fits(requests, node.free) for node in feasible.nodes)


def _headroom(feasible: list[_Feasible], requests: tuple[tuple[str, int], ...]) -> float:
    """Share of the asked-for resources left free after placing, on the scarcest one."""
    capacity = dict.fromkeys((name for name, _ in requests), 0)
    free = dict(capacity)
    for candidate in feasible:
        shape = candidate.shape
        for name in capacity:
            capacity[name] += shape.capacity.get(name, 0)
            if shape.schedulable:
                free[name] += shape.total_free.get(name, 0)
    return (
        min(
            ((free[name] - amount) / capacity[name] if capacity[name] else 0.0)
            for name, amount in requests
        )
        if requests
        else 0.0
    )


def _wait_message(
    feasible: list[_Feasible], requests: tuple[tuple[str, int], ...]
) -> tuple[Reason, str]:
    ready = [f for f in feasible if f.shape.schedulable]
    if not ready:
        count = sum(f.shape.count for f in feasible)
        noun = "node that could run it is" if count == 1 else f"{count} nodes that could run it are"
        return Reason.NODES_NOT_READY, f"the {noun} not ready or cordoned"
    most: dict[str, int] = {}
    for f in ready:
        for name, _ in requests:
            most[name] = max(most.get(name, 0), f.shape.max_free.get(name, 0))
    short = [(n, a) for n, a in requests if most.get(n, 0) < a]
    if short:
        name, amount = short[0]
        have = max(most.get(name, 0), 0)
        return Reason.INSUFFICIENT_FREE, (
            f"needs {quantity.describe_amount(name, amount)} free on one node, "
            f"most free now is {quantity.describe_amount(name, have)}"
        )
    return Reason.INSUFFICIENT_FREE, (
        f"needs {_describe_requests(requests)} free on one node; no node has all of it now"
    )


def _rank_key(candidate: _Candidate, policy: RoutingPolicy, max_cost: float) -> tuple[Any, ...]:
    state = candidate.state
    cost = math.inf if candidate.cost is None else candidate.cost
    in_plane = state.info.role is ClusterRole.IN_PLANE and policy.prefer_in_plane
    head = (0 if state.health is Health.UP else 1, 0 if in_plane else 1)
    if policy.strategy is Strategy.COST:
        tail: tuple[float, ...] = (cost, -candidate.headroom)
    elif policy.strategy is Strategy.LEAST_LOADED:
        tail = (state.queue_depth, -candidate.headroom, cost)
    elif policy.strategy is Strategy.BIN_PACK:
        tail = (candidate.headroom, cost)
    else:
        # Unknown cost counts as the dearest; all-free clusters tie at zero.
        share = 1.0 if not math.isfinite(cost) else cost / max_cost if max_cost > 0 else 0.0
        tail = (policy.weights.cost * share + policy.weights.headroom * (1 - candidate.headroom),)
    return (*head, *tail, state.name)


def _outranked_message(loser: _Candidate, winner: _Candidate, policy: RoutingPolicy) -> str:
    if loser.state.health is not Health.UP and winner.state.health is Health.UP:
        return f"fits, but the cluster is {loser.state.health.value}; {winner.state.name} is up"
    winner_in_plane = winner.state.info.role is ClusterRole.IN_PLANE and policy.prefer_in_plane
    loser_in_plane = loser.state.info.role is ClusterRole.IN_PLANE and policy.prefer_in_plane
    if winner_in_plane and not loser_in_plane:
        return f"fits, but in-plane cluster {winner.state.name} is preferred"
    if policy.strategy is Strategy.WEIGHTED:
        return f"fits, {winner.state.name} scores better on cost and headroom"
    if policy.strategy is Strategy.COST and loser.cost != winner.cost:
        return (
            f"fits at {_money(loser.cost) or 'unknown cost'}, "
            f"{winner.state.name} is cheaper at {_money(winner.cost)}"
        )
    if policy.strategy is Strategy.LEAST_LOADED and loser.state.queue_depth != (
        winner.state.queue_depth
    ):
        return f"fits, fewer tasks wait for {winner.state.name}"
    if loser.headroom != winner.headroom:
        if policy.strategy is Strategy.BIN_PACK:
            return f"fits, {winner.state.name} is fuller (bin-packing)"
        return f"fits, {winner.state.name} has more free room"
    if loser.cost != winner.cost:
        return f"fits, {winner.state.name} is cheaper at {_money(winner.cost)}"
    return f"fits, {winner.state.name} is as good and comes first by name"


def _unusable(health: Health) -> tuple[Reason, str]:
    if health is Health.CREDENTIALS_UNAVAILABLE:
        return Reason.CREDENTIALS_UNAVAILABLE, "its credentials are unavailable"
    return Reason.CLUSTER_DOWN, "is down"


def _judge_cluster(
    task: TaskSpec,
    state: ClusterState,
    requests: tuple[tuple[str, int], ...],
    hint: _Hint,
    allowance: ClusterAllowance | None,
    *,
    source: Source | None,
) -> ClusterVerdict | _Candidate:
    constraints = pod_constraints(task, state.info.pod_defaults)
    refused = _cluster_filters(task, state, constraints, hint, allowance)
    if refused is not None:
        return ClusterVerdict(state.name, Verdict.REJECT, *refused)
    if state.health is Health.REFUSED:
        # Waiting would be forever: the credential needs a person, not time.
        return ClusterVerdict(
            state.name,
            Verdict.REJECT,
            Reason.CLUSTER_REFUSED,
            f"refused: {state.refusal or 'its credentials were refused'}",
        )
    report = _dependency_report(task, state, source)
    if report is not None and report.missing:
        words = "; ".join(why for _, why in report.missing)
        return ClusterVerdict(
            state.name, Verdict.REJECT, Reason.DEPENDENCY_MISSING, words, dependencies=report
        )
    verdict = _judge_nodes(task, state, requests)
    if isinstance(verdict, _Candidate):
        if report is not None and report.unknown and state.health.routable:
            words = "; ".join(dict.fromkeys(why for _, why in report.unknown))
            return ClusterVerdict(
                state.name,
                Verdict.WAIT,
                Reason.DEPENDENCIES_UNKNOWN,
                f"could run the task, but cannot tell yet whether its dependencies are "
                f"there: {words}",
                verdict.cost,
                dependencies=report,
            )
        return dataclasses.replace(verdict, dependencies=report)
    return dataclasses.replace(verdict, dependencies=report)


def _dependency_report(
    task: TaskSpec, state: ClusterState, source: Source | None
) -> DependencyReport | None:
    """How the cluster stands for the task's dependencies (and what its copy policy would
    bring there from ``source`` or Vault); ``None`` when not checked."""
    if not state.info.check_dependencies or state.objects is None:
        return None
    defaults = state.info.pod_defaults
    references = (*dependencies(task, defaults), *registry_references(task, state.info))
    if not references:
        return None
    namespace = pod_namespace(task, defaults)
    view = state.objects.get(namespace)
    if view is None:
        view = NamespaceView(unknown=dict.fromkeys({r.kind for r in references}, "not watched"))
    return resolve(check(references, namespace, view), state.info.copies, source)


def copy_source(task: TaskSpec, snapshot: Snapshot, target: str) -> Source | None:
    """Where copies of ``task``'s dependencies for cluster ``target`` come from: the task's
    namespace in the in-plane cluster (``None`` without one, or when it is the target)."""
    plane = next((c for c in snapshot.clusters if c.info.role is ClusterRole.IN_PLANE), None)
    if plane is None or plane.name == target:
        return None
    namespace = pod_namespace(task, plane.info.pod_defaults)
    view = None if plane.objects is None else plane.objects.get(namespace)
    return Source(plane.name, namespace, view)


def registry_references(task: TaskSpec, info: ClusterInfo) -> tuple[Reference, ...]:
    """The pull Secrets the cluster's registries give ``task`` (its images' registries)."""
    images = task_images(task, info.pod_defaults)
    return tuple(
        Reference(
            DependencyKind.SECRET, registry.secret_name, field=f"registries[{registry.server}]"
        )
        for registry in registries_for(images, info.copies)
    )


def task_images(task: TaskSpec, defaults: PodDefaults) -> tuple[str, ...]:
    """Every image the task's pod pulls on a cluster with these pod defaults."""
    images = [task.image, *(c.image for c in task.init_containers)]
    if task.xcom_sidecar:
        images.append(defaults.xcom_sidecar_image)
    return tuple(dict.fromkeys(images))


def _judge_nodes(
    task: TaskSpec,
    state: ClusterState,
    requests: tuple[tuple[str, int], ...],
) -> ClusterVerdict | _Candidate:
    constraints = pod_constraints(task, state.info.pod_defaults)
    if not state.shapes:
        if not state.health.routable:
            # A down cluster's nodes may just be unknown (never listed): wait for it.
            reason, why = _unusable(state.health)
            return ClusterVerdict(
                state.name,
                Verdict.WAIT,
                reason,
                f"{why} and its nodes are unknown; waiting for it to recover",
            )
        return ClusterVerdict(state.name, Verdict.REJECT, Reason.NO_NODES, "has no nodes")
    static = _static_filters(task, state, constraints, requests)
    if not static.feasible:
        reason = _STAGE_REASON[static.furthest]
        message = _reject_message(task, static, constraints, requests)
        return ClusterVerdict(state.name, Verdict.REJECT, reason, message)
    cost = _hourly_cost(state, task.requests, static.feasible)
    cap = task.requirements.max_cost_per_hour
    if cap is not None and cost is None:
        return ClusterVerdict(
            state.name,
            Verdict.REJECT,
            Reason.COST_UNKNOWN,
            "the cost table has no price for these GPUs, and the task has a cost cap",
        )
    if cap is not None and cost is not None and cost > cap:
        return ClusterVerdict(
            state.name,
            Verdict.REJECT,
            Reason.OVER_COST_CAP,
            f"would cost {_money(cost)}, over the task's cap of {_money(cap)}",
            cost,
        )
    if not state.health.routable:
        reason, why = _unusable(state.health)
        return ClusterVerdict(
            state.name,
            Verdict.WAIT,
            reason,
            f"could run the task but {why}; waiting for it to recover",
            cost,
        )
    for feasible in static.feasible:
        if _fits_now(feasible, requests):
            return _Candidate(state, feasible.shape, cost, _headroom(static.feasible, requests))
    reason, message = _wait_message(static.feasible, requests)
    return ClusterVerdict(state.name, Verdict.WAIT, reason, message, cost)


def route(
    task: TaskSpec,
    snapshot: Snapshot,
    policy: RoutingPolicy | None = None,
    allowance: ClusterAllowance | None = None,
) -> Decision:
    """Choose a cluster for ``task``; explain every cluster. Pure and deterministic.

    ``allowance``: the clusters the submitting tenant may use (``None``: any).
    """
    policy = policy or RoutingPolicy()
    requests = tuple(sorted(task.requests.items()))
    hint = _cluster_hint(task, snapshot, policy)
    candidates: list[_Candidate] = []
    others: list[ClusterVerdict] = []
    for state in snapshot.clusters:
        source = copy_source(task, snapshot, state.name) if state.info.copies.enabled else None
        judged = _judge_cluster(task, state, requests, hint, allowance, source=source)
        if isinstance(judged, _Candidate):
            candidates.append(judged)
        else:
            others.append(judged)
    others.sort(key=lambda v: (v.verdict is not Verdict.WAIT, v.cluster))
    if not candidates:
        verdict = (
            Verdict.WAIT if any(v.verdict is Verdict.WAIT for v in others) else (Verdict.REJECT)
        )
        return Decision(verdict=verdict, clusters=tuple(others), notes=hint.notes)
    costs = [c.cost for c in candidates if c.cost is not None]
    max_cost = max(costs, default=0.0)
    candidates.sort(key=lambda c: _rank_key(c, policy, max_cost))
    winner = candidates[0]
    placed = [
        ClusterVerdict(
            winner.state.name,
            Verdict.PLACE,
            Reason.PLACED,
            f"fits on {winner.shape.describe()}"
            + (f", {_money(winner.cost)}" if winner.cost is not None else ""),
            winner.cost,
            winner.shape,
            winner.dependencies,
        )
    ]
    placed.extend(
        ClusterVerdict(
            c.state.name,
            Verdict.PLACE,
            Reason.OUTRANKED,
            _outranked_message(c, winner, policy),
            c.cost,
            c.shape,
            c.dependencies,
        )
        for c in candidates[1:]
    )
    return Decision(
        verdict=Verdict.PLACE,
        clusters=(*placed, *others),
        cluster=winner.state.name,
        shape=winner.shape,
        hourly_cost=winner.cost,
        placement=placement_for(task, winner.state),
        notes=hint.notes,
    )


def placement_for(task: TaskSpec, state: ClusterState) -> Placement:
    """The placement of ``task`` on ``state``'s cluster: pod defaults, GPU model pins.

    The pins list every (label, value) of the cluster's nodes naming a GPU model that
    matches the task's ``gpu_model``, so the pod can land exactly where routing looked.
    """
    wanted = task.requirements.gpu_model
    pins: dict[str, set[str]] = {}
    if wanted:
        for shape in state.shapes:
            for key, value in shape.gpu_labels:
                if gpu_model_matches(wanted, value):
                    pins.setdefault(key, set()).add(value)
    return Placement(
        cluster=state.name,
        defaults=state.info.pod_defaults,
        pull_secrets=tuple(r.name for r in registry_references(task, state.info)),
        gpu_model_labels={key: tuple(sorted(values)) for key, values in sorted(pins.items())},
    )
