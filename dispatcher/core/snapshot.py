"""A frozen picture of every cluster, as routing sees it; pure, no I/O.

The edge layer (informers) keeps nodes and pods per cluster and calls the builders here to
produce a ``Snapshot`` for each routing cycle:

- ``NodeInfo.from_k8s(node_dict, used=...)`` reads a Node in the API's JSON shape;
- ``pod_requests(pod_dict)`` computes what a pod reserves, the way the scheduler does;
- ``ClusterState.from_k8s(info, health=..., nodes=..., pods=...)`` does both and groups
  nodes into shapes; ``ClusterState.build(info, health=..., nodes=[NodeInfo...])`` starts
  from ``NodeInfo`` values the caller keeps up to date itself.

Nodes with the same allocatable resources, labels (all but per-node identity labels such as
``kubernetes.io/hostname``), taints and readiness form one ``NodeShape``. Routing checks
selectors, affinity, taints and capacity once per shape, and free room against a shape's
*frontier* (its distinct free-resource vectors that no other node's free vector dominates),
so a decision costs in proportion to distinct shapes, not to nodes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dispatcher.core import quantity
from dispatcher.core.copies import CopyPolicy
from dispatcher.core.dependencies import DependencyKind, NamespaceView
from dispatcher.core.names import DNSLabel, LabelKey, LabelValue
from dispatcher.core.podsecurity import PodSecurity
from dispatcher.core.spec import PodDefaults
from dispatcher.errors import Problem, RefusalReason, SnapshotError

__all__ = [
    "GPU_MODEL_LABELS",
    "IDENTITY_LABELS",
    "ClusterInfo",
    "ClusterRefusal",
    "ClusterRole",
    "ClusterState",
    "CostTable",
    "FreeVector",
    "Health",
    "NodeInfo",
    "NodeShape",
    "Snapshot",
    "Taint",
    "free_vector",
    "gpu_model_labels",
    "gpu_model_matches",
    "is_terminated",
    "pod_requests",
    "shape_key",
    "snapshot_from_document",
    "usage_by_node",
]

ResourceVector = Mapping[str, int]

#: Node labels naming the GPU model, first match wins: NVIDIA GPU feature discovery, GKE,
#: Karpenter on AWS, and the older EKS accelerator label.
GPU_MODEL_LABELS = (
    "nvidia.com/gpu.product",
    "cloud.google.com/gke-accelerator",
    "karpenter.k8s.aws/instance-gpu-name",
    "k8s.amazonaws.com/accelerator",
)

#: Labels unique to each node. They are left out of the shape key (or every node would be
#: its own shape) and checked per node when a task's selector or affinity names them.
IDENTITY_LABELS = frozenset({"kubernetes.io/hostname"})


class Health(StrEnum):
    """How reachable a cluster is, as the edge layer last saw it."""

    UP = "up"
    #: Reachable but misbehaving (slow, errors, throttling); still routed to, after
    #: healthy clusters.
    DEGRADED = "degraded"
    #: Its API server is in trouble (unreachable, timing out, 5xx); tasks that could run
    #: there wait rather than fail. Only this state may move running work elsewhere.
    DOWN = "down"
    #: We have no usable credentials for it (Vault unavailable, credential refused); the
    #: cluster itself may be fine and its pods keep running. Tasks wait, as for DOWN.
    CREDENTIALS_UNAVAILABLE = "credentials-unavailable"
    #: What Vault (or a file) holds for it breaks our rules: an exec plugin, a server or CA
    #: other than the pinned one, a loopback address... (``ClusterState.refusal`` says
    #: which). Not routable, and tasks that only it could run are rejected: it does not
    #: recover until someone fixes the credential. Its pods keep running.
    REFUSED = "refused"

    @property
    def routable(self) -> bool:
        """Whether pods may be created there now."""
        return self in (Health.UP, Health.DEGRADED)


class ClusterRole(StrEnum):
    IN_PLANE = "in-plane"
    EXTERNAL = "external"


@functools.lru_cache(maxsize=1024)
def _words(text: str) -> tuple[str, ...]:
    # Cached: routing asks about the same few model names for every shape.
    return tuple(
        part for part in text.lower().replace("_", "-").replace(" ", "-").split("-") if part
    )


def gpu_model_matches(wanted: str, model: str | None) -> bool:
    """Whether the GPU ``model`` of a node is the ``wanted`` one.

    Case-insensitive; ``wanted`` matches the whole model name or a run of its words
    (split on '-', '_', ' '): "a100" and "A100-SXM4-80GB" both match
    "NVIDIA-A100-SXM4-80GB", "h100" does not, nor does "a10".
    """
    if model is None:
        return False
    want, have = _words(wanted), _words(model)
    if not want:
        return False
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def gpu_model_labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The node's GPU model labels present, as (key, value), in ``GPU_MODEL_LABELS`` order."""
    return tuple((key, labels[key]) for key in GPU_MODEL_LABELS if labels.get(key))


class CostTable(BaseModel):
    """Prices of a cluster, per hour: per vCPU, per GiB of memory, per GPU by model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_hour: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    memory_gib_hour: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: GPU model (as ``gpu_model_matches`` understands it) -> price per GPU-hour.
    gpu_hour: dict[str, float] = Field(default_factory=dict)
    #: Price of a GPU whose model is not in ``gpu_hour``; ``None`` means unknown.
    default_gpu_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    def gpu_price(self, model: str | None) -> float | None:
        """Price per GPU-hour of ``model``: exact name first, then a word match."""
        if model is not None:
            lowered = model.lower()
            for name, price in sorted(self.gpu_hour.items()):
                if name.lower() == lowered:
                    return price
            for name, price in sorted(self.gpu_hour.items()):
                if gpu_model_matches(name, model):
                    return price
        return self.default_gpu_hour

    def hourly(self, requests: ResourceVector, gpu_model: str | None) -> float | None:
        """Hourly cost of ``requests``; ``None`` when GPUs are asked but unpriced."""
        cost = self.cpu_hour * requests.get(quantity.CPU, 0) / 1000
        cost += self.memory_gib_hour * requests.get(quantity.MEMORY, 0) / 2**30
        gpus = requests.get(quantity.GPU, 0)
        if gpus:
            price = self.gpu_price(gpu_model)
            if price is None:
                return None
            cost += price * gpus
        return cost


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str

    @classmethod
    def from_k8s(cls, taint: Mapping[str, Any]) -> Taint:
        return cls(
            str(taint.get("key", "")), str(taint.get("value") or ""), str(taint.get("effect", ""))
        )

    def __str__(self) -> str:
        value = f"={self.value}" if self.value else ""
        return f"{self.key}{value}:{self.effect}"


def _parse_resources(resources: Mapping[str, Any] | None, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in (resources or {}).items():
        try:
            out[name] = quantity.to_amount(name, value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}[{name}]: {exc}") from None
    return out


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node: what it has, what its pods reserve, and what constrains placement."""

    name: str
    allocatable: ResourceVector
    used: ResourceVector = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    unschedulable: bool = False

    @property
    def free(self) -> dict[str, int]:
        """Allocatable minus used; negative when pods overcommit the node."""
        free = dict(self.allocatable)
        for name, amount in self.used.items():
            free[name] = free.get(name, 0) - amount
        return free

    @property
    def gpu_model(self) -> str | None:
        labels = gpu_model_labels(self.labels)
        return labels[0][1] if labels else None

    @classmethod
    def from_k8s(cls, node: Mapping[str, Any], used: ResourceVector | None = None) -> NodeInfo:
        """A ``NodeInfo`` from a Node in the API's JSON shape (``status.allocatable``...).

        Raises ``ValueError`` naming the field when a quantity is malformed.
        """
        metadata = node.get("metadata") or {}
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        resources = status.get("allocatable")
        where = "status.allocatable"
        if resources is None:
            resources, where = status.get("capacity"), "status.capacity"
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return cls(
            name=str(metadata.get("name", "")),
            allocatable=_parse_resources(resources, where),
            used=dict(used or {}),
            labels=dict(metadata.get("labels") or {}),
            taints=tuple(Taint.from_k8s(t) for t in spec.get("taints") or ()),
            ready=ready,
            unschedulable=bool(spec.get("unschedulable", False)),
        )


def _container_requests(container: Mapping[str, Any], where: str) -> dict[str, int]:
    resources = container.get("resources") or {}
    # The API server defaults requests to limits; pods from the API have that already,
    # pods from documents may not.
    merged = _parse_resources(resources.get("limits"), f"{where}.resources.limits")
    merged.update(_parse_resources(resources.get("requests"), f"{where}.resources.requests"))
    return merged


def pod_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """What a pod reserves on its node, computed like the scheduler (``PodRequests``).

    The sum over containers, raised to the largest init container where that is larger,
    with restartable (sidecar) init containers counted as running alongside everything
    after them; then pod-level ``spec.resources.requests`` where set, plus ``overhead``.
    The pod slot itself is not included (see ``usage_by_node``).
    """
    spec = pod.get("spec") or {}
    containers: dict[str, int] = {}
    for index, container in enumerate(spec.get("containers") or ()):
        quantity.add_requests(
            containers, _container_requests(container, f"spec.containers[{index}]")
        )
    total = quantity.pod_requests_with_init(
        containers,
        (
            (
                _container_requests(container, f"spec.initContainers[{index}]"),
                container.get("restartPolicy") == "Always",
            )
            for index, container in enumerate(spec.get("initContainers") or ())
        ),
    )
    pod_level = (spec.get("resources") or {}).get("requests")
    total.update(_parse_resources(pod_level, "spec.resources.requests"))
    quantity.add_requests(total, _parse_resources(spec.get("overhead"), "spec.overhead"))
    return {name: amount for name, amount in total.items() if amount}


def is_terminated(pod: Mapping[str, Any]) -> bool:
    """Succeeded and Failed pods no longer hold resources on their node."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def usage_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per node name, the requests of the non-terminated pods bound to it, plus pod slots."""
    usage: dict[str, dict[str, int]] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name or is_terminated(pod):
            continue
        used = usage.setdefault(node_name, {})
        quantity.add_requests(used, pod_requests(pod))
        used[quantity.PODS] = used.get(quantity.PODS, 0) + 1
    return usage


@dataclass(frozen=True, slots=True)
class NodeShape:
    """Nodes alike in everything routing checks except their free room.

    ``labels`` leaves out ``IDENTITY_LABELS``; each node in ``nodes`` keeps its own.
    ``frontier`` holds the distinct free vectors no other node's free vector dominates:
    a pod fits on some node of the shape now iff it fits one of them.
    """

    allocatable: ResourceVector
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    ready: bool
    unschedulable: bool
    gpu_model: str | None
    #: Every GPU model label of the shape's nodes, (key, value); ``gpu_model`` is the first.
    gpu_labels: tuple[tuple[str, str], ...]
    nodes: tuple[NodeInfo, ...]
    frontier: tuple[ResourceVector, ...]
    #: Per resource, the most any single node of the shape has free.
    max_free: ResourceVector
    #: Per resource, free summed over the shape's nodes (negatives count as zero).
    total_free: ResourceVector
    #: Per resource, allocatable summed over the shape's nodes.
    capacity: ResourceVector

    @property
    def count(self) -> int:
        return len(self.nodes)

    @property
    def schedulable(self) -> bool:
        return self.ready and not self.unschedulable

    def describe(self) -> str:
        """``8x NVIDIA-A100-SXM4-80GB, 96 CPUs, 1Ti memory (4 nodes)``-style summary."""
        parts = []
        gpus = self.allocatable.get(quantity.GPU, 0)
        if gpus:
            parts.append(f"{gpus}x {self.gpu_model or 'GPU'}")
        parts.extend(
            quantity.describe_amount(name, self.allocatable[name])
            for name in (quantity.CPU, quantity.MEMORY)
            if name in self.allocatable
        )
        noun = "node" if self.count == 1 else "nodes"
        return f"{', '.join(parts) or 'no resources'} ({self.count} {noun})"

    @classmethod
    def of(cls, nodes: Iterable[NodeInfo]) -> NodeShape:
        """Group nodes known to share a shape (same allocatable, labels, taints, state)."""
        members = tuple(sorted(nodes, key=lambda n: n.name))
        frees: dict[FreeVector, int] = {}
        for node in members:
            vector = free_vector(node)
            frees[vector] = frees.get(vector, 0) + 1
        return cls.assemble(members, frees)

    @classmethod
    def assemble(cls, members: tuple[NodeInfo, ...], frees: Mapping[FreeVector, int]) -> NodeShape:
        """The shape of ``members`` (sorted by name, alike as ``of`` says), given how many of
        them have each free vector (``free_vector``). Costs O(distinct free vectors) besides
        taking ``members`` as they are, so a cache that keeps the counts up to date rebuilds
        a shape without visiting its nodes."""
        first = members[0]
        names = sorted({name for vector in frees for name, _ in vector})
        # Aligned on one key order, so that tuple order below compares amounts.
        aligned: dict[tuple[int, ...], int] = {}
        for vector, count in frees.items():
            amounts = dict(vector)
            key = tuple(amounts.get(name, 0) for name in names)
            aligned[key] = aligned.get(key, 0) + count
        max_free = {
            name: max(vector[index] for vector in aligned) for index, name in enumerate(names)
        }
        total_free = {
            name: sum(max(vector[index], 0) * count for vector, count in aligned.items())
            for index, name in enumerate(names)
        }
        # Visit in descending lexicographic order: whatever dominates a vector comes before
        # it, so comparing against the frontier kept so far is enough.
        kept: list[tuple[int, ...]] = []
        for point in sorted(aligned, reverse=True):
            if not any(all(k >= v for k, v in zip(other, point, strict=True)) for other in kept):
                kept.append(point)
        frontier = tuple(dict(zip(names, point, strict=True)) for point in kept)
        return cls(
            allocatable=dict(first.allocatable),
            labels={k: v for k, v in first.labels.items() if k not in IDENTITY_LABELS},
            taints=first.taints,
            ready=first.ready,
            unschedulable=first.unschedulable,
            gpu_model=first.gpu_model,
            gpu_labels=gpu_model_labels(first.labels),
            nodes=members,
            frontier=frontier,
            max_free=max_free,
            total_free=total_free,
            capacity={name: amount * len(members) for name, amount in first.allocatable.items()},
        )


#: A node's free room as sorted (resource, amount) pairs: hashable, so nodes can be
#: counted by it (``NodeShape.assemble``).
FreeVector = tuple[tuple[str, int], ...]


def free_vector(node: NodeInfo) -> FreeVector:
    """``node.free`` as a ``FreeVector``."""
    return tuple(sorted(node.free.items()))


def shape_key(node: NodeInfo) -> tuple[Any, ...]:
    """What the nodes of one ``NodeShape`` share: all but their names, identity labels
    and free room."""
    return (
        tuple(sorted(node.allocatable.items())),
        tuple(sorted((k, v) for k, v in node.labels.items() if k not in IDENTITY_LABELS)),
        tuple(sorted(node.taints, key=lambda t: (t.key, t.value, t.effect))),
        node.ready,
        node.unschedulable,
    )


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What configuration says about a cluster (as opposed to what is observed)."""

    name: str
    role: ClusterRole = ClusterRole.EXTERNAL
    labels: Mapping[str, str] = field(default_factory=dict)
    cost: CostTable = field(default_factory=CostTable)
    pod_defaults: PodDefaults = field(default_factory=PodDefaults)
    pod_security: PodSecurity = field(default_factory=PodSecurity)
    #: Whether routing refuses the cluster for a task whose Secrets, ConfigMaps, PVCs or
    #: ServiceAccount are not in its task namespace (``dispatcher.core.dependencies``).
    check_dependencies: bool = True
    #: Which missing dependencies the dispatcher may bring here (``dispatcher.core.copies``).
    copies: CopyPolicy = field(default_factory=CopyPolicy)


@dataclass(frozen=True, slots=True)
class Capacity:
    """A cluster's totals as (allocatable, free) pairs."""

    cpu_millicores: tuple[int, int]
    memory_bytes: tuple[int, int]
    gpus: Mapping[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class ClusterRefusal:
    """Why a cluster is ``Health.REFUSED``: the bounded reason and the words for people."""

    reason: RefusalReason
    message: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}" if self.message else self.reason.value


@dataclass(frozen=True, slots=True)
class ClusterState:
    """One cluster at one moment: its configuration, health and node shapes."""

    info: ClusterInfo
    health: Health
    shapes: tuple[NodeShape, ...]
    #: Tasks waiting for this cluster; the least-loaded strategy avoids long queues.
    queue_depth: int = 0
    #: Why it is ``Health.REFUSED`` (``None`` otherwise).
    refusal: ClusterRefusal | None = None
    #: Task namespace -> the Secrets, ConfigMaps, PVCs and ServiceAccounts seen there
    #: (names and key names only). ``None``: nobody looked, so routing cannot check a
    #: task's dependencies here and says so.
    objects: Mapping[str, NamespaceView] | None = field(default=None, repr=False)
    #: Moves with every change that may let a waiting task run here (room freed, nodes,
    #: health, dependencies), not with changes that only take room (a pod assumed or
    #: bound where it was assumed): while it stays, what had to wait still must. Kept by
    #: the cache; not part of what the state says, so not compared.
    generation: int = field(default=0, compare=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def node_count(self) -> int:
        return sum(shape.count for shape in self.shapes)

    def capacity(self) -> Capacity:
        """Allocatable and free CPU (millicores), memory (bytes) and GPUs by model, over
        schedulable nodes: what dashboards and ``GET /v1/clusters`` show."""
        cpu = [0, 0]
        memory = [0, 0]
        gpus: dict[str, list[int]] = {}
        for shape in self.shapes:
            if not shape.schedulable:
                continue
            cpu[0] += shape.capacity.get(quantity.CPU, 0)
            cpu[1] += shape.total_free.get(quantity.CPU, 0)
            memory[0] += shape.capacity.get(quantity.MEMORY, 0)
            memory[1] += shape.total_free.get(quantity.MEMORY, 0)
            if shape.capacity.get(quantity.GPU, 0):
                totals = gpus.setdefault(shape.gpu_model or "unknown", [0, 0])
                totals[0] += shape.capacity[quantity.GPU]
                totals[1] += shape.total_free.get(quantity.GPU, 0)
        return Capacity(
            cpu_millicores=(cpu[0], cpu[1]),
            memory_bytes=(memory[0], memory[1]),
            gpus={model: (a, f) for model, (a, f) in sorted(gpus.items())},
        )

    @classmethod
    def build(
        cls,
        info: ClusterInfo,
        *,
        health: Health = Health.UP,
        nodes: Iterable[NodeInfo] = (),
        queue_depth: int = 0,
        refusal: ClusterRefusal | None = None,
        objects: Mapping[str, NamespaceView] | None = None,
    ) -> ClusterState:
        groups: dict[tuple[Any, ...], list[NodeInfo]] = {}
        for node in nodes:
            groups.setdefault(shape_key(node), []).append(node)
        return cls.assemble(
            info,
            health=health,
            shapes=(NodeShape.of(group) for group in groups.values()),
            queue_depth=queue_depth,
            refusal=refusal,
            objects=objects,
        )

    @classmethod
    def assemble(
        cls,
        info: ClusterInfo,
        *,
        health: Health,
        shapes: Iterable[NodeShape],
        queue_depth: int = 0,
        refusal: ClusterRefusal | None = None,
        objects: Mapping[str, NamespaceView] | None = None,
        generation: int = 0,
    ) -> ClusterState:
        """From shapes already grouped (``build`` groups nodes; a cache keeps them)."""
        return cls(
            info=info,
            health=health,
            shapes=tuple(sorted(shapes, key=lambda s: s.nodes[0].name)),
            queue_depth=queue_depth,
            refusal=refusal if health is Health.REFUSED else None,
            objects=objects,
            generation=generation,
        )

    @classmethod
    def from_k8s(
        cls,
        info: ClusterInfo,
        *,
        health: Health = Health.UP,
        nodes: Iterable[Mapping[str, Any]] = (),
        pods: Iterable[Mapping[str, Any]] = (),
        queue_depth: int = 0,
    ) -> ClusterState:
        """Build from Nodes and Pods in the API's JSON shape (informer caches)."""
        usage = usage_by_node(pods)
        infos = []
        for node in nodes:
            name = str((node.get("metadata") or {}).get("name", ""))
            infos.append(NodeInfo.from_k8s(node, used=usage.get(name)))
        return cls.build(info, health=health, nodes=infos, queue_depth=queue_depth)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every cluster, sorted by name; what one routing decision looks at."""

    clusters: tuple[ClusterState, ...]

    @classmethod
    def of(cls, clusters: Iterable[ClusterState]) -> Snapshot:
        ordered = tuple(sorted(clusters, key=lambda c: c.name))
        names = [c.name for c in ordered]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate cluster names in snapshot: {', '.join(duplicates)}")
        return cls(ordered)

    def cluster(self, name: str) -> ClusterState | None:
        for state in self.clusters:
            if state.name == name:
                return state
        return None


class _NamespaceDocument(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    secrets: dict[str, list[str]] = Field(default_factory=dict)
    configmaps: dict[str, list[str]] = Field(default_factory=dict)
    persistentvolumeclaims: list[str] = Field(default_factory=list)
    serviceaccounts: list[str] = Field(default_factory=list)

    def view(self) -> NamespaceView:
        return NamespaceView(
            objects={
                DependencyKind.SECRET: {n: frozenset(k) for n, k in self.secrets.items()},
                DependencyKind.CONFIG_MAP: {n: frozenset(k) for n, k in self.configmaps.items()},
                DependencyKind.PERSISTENT_VOLUME_CLAIM: dict.fromkeys(
                    self.persistentvolumeclaims, frozenset()
                ),
                DependencyKind.SERVICE_ACCOUNT: dict.fromkeys(self.serviceaccounts, frozenset()),
            }
        )


class _ClusterDocument(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: DNSLabel
    role: ClusterRole = ClusterRole.EXTERNAL
    health: Health = Health.UP
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    cost: CostTable = Field(default_factory=CostTable)
    pod_defaults: PodDefaults = Field(default_factory=PodDefaults)
    pod_security: PodSecurity = Field(default_factory=PodSecurity)
    queue_depth: int = Field(default=0, ge=0)
    nodes: list[dict[str, Any]] = Field(default_factory=list)
    pods: list[dict[str, Any]] = Field(default_factory=list)
    #: Namespace -> the objects there: ``secrets`` and ``configmaps`` map names to key
    #: names, ``persistentvolumeclaims`` and ``serviceaccounts`` list names.
    objects: dict[DNSLabel, _NamespaceDocument] | None = None


class _SnapshotDocument(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    clusters: list[_ClusterDocument]


def _expand_nodes(nodes: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    expanded: list[dict[str, Any]] = []
    for index, node in enumerate(nodes):
        count = node.get("count")
        if count is None:
            expanded.append(node)
            continue
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100_000:
            raise SnapshotError.single(f"{where}[{index}].count", "must be 1 to 100000")
        base = {k: v for k, v in node.items() if k != "count"}
        metadata = base.get("metadata") or {}
        for copy in range(count):
            name = f"{metadata.get('name', 'node')}-{copy}"
            labels = {**(metadata.get("labels") or {}), "kubernetes.io/hostname": name}
            expanded.append({**base, "metadata": {**metadata, "name": name, "labels": labels}})
    return expanded


def snapshot_from_document(
    document: Any,
    *,
    infos: Mapping[str, ClusterInfo] | None = None,
    source: str | None = None,
) -> Snapshot:
    """A ``Snapshot`` from a document (the CLI's ``--snapshot`` YAML; tests).

    The document lists ``clusters``, each with ``name``, ``role``, ``health``, ``labels``,
    ``cost``, ``pod_defaults``, ``nodes``/``pods`` in the API's JSON shape, and optionally
    ``objects`` (per namespace, the Secrets and ConfigMaps with their key names and the
    PVCs and ServiceAccounts there; without it, dependencies are not checked). A node may
    carry ``count: N`` to stand for N identical nodes named ``<name>-0`` ... ``<name>-N-1``.
    Clusters named in ``infos`` (from the settings file) take role, labels, cost and pod
    defaults from there instead. Raises ``SnapshotError`` listing the problems.
    """
    try:
        parsed = _SnapshotDocument.model_validate(document)
    except ValidationError as exc:
        raise SnapshotError(Problem.from_validation_error(exc), source=source) from None
    states = []
    for index, doc in enumerate(parsed.clusters):
        where = f"clusters[{index}]"
        info = (infos or {}).get(doc.name) or ClusterInfo(
            name=doc.name,
            role=doc.role,
            labels=doc.labels,
            cost=doc.cost,
            pod_defaults=doc.pod_defaults,
            pod_security=doc.pod_security,
        )
        nodes = _expand_nodes(doc.nodes, f"{where}.nodes")
        try:
            usage = usage_by_node(doc.pods)
        except ValueError as exc:
            raise SnapshotError.single(f"{where}.pods", str(exc), source=source) from None
        node_infos = []
        for node_index, node in enumerate(nodes):
            name = str((node.get("metadata") or {}).get("name", ""))
            if not name:
                raise SnapshotError.single(
                    f"{where}.nodes[{node_index}].metadata.name", "field required", source=source
                )
            try:
                node_infos.append(NodeInfo.from_k8s(node, used=usage.get(name)))
            except ValueError as exc:
                raise SnapshotError.single(
                    f"{where}.nodes[{node_index}]", str(exc), source=source
                ) from None
        states.append(
            ClusterState.build(
                info,
                health=doc.health,
                nodes=node_infos,
                queue_depth=doc.queue_depth,
                objects=None
                if doc.objects is None
                else {namespace: ns.view() for namespace, ns in doc.objects.items()},
            )
        )
    try:
        return Snapshot.of(states)
    except ValueError as exc:
        raise SnapshotError.single("clusters", str(exc), source=source) from None
