"""The scheduler's node predicates, and the pod constraints a task ends up with; pure.

``pod_constraints`` merges a task with a cluster's pod defaults exactly as ``podspec`` writes
them onto the pod, so routing judges the pod that will be created, not the task as written.
The predicates mirror kube-scheduler's filter plugins: TaintToleration (NoSchedule and
NoExecute; PreferNoSchedule only scores), NodeAffinity (``nodeSelector`` and required
``nodeSelectorTerms``) and NodeResourcesFit (see ``fits``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dispatcher.core.snapshot import IDENTITY_LABELS, Taint
from dispatcher.core.spec import (
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PodDefaults,
    SelectorOperator,
    TaskSpec,
    Toleration,
    TolerationOperator,
)

__all__ = [
    "PodConstraints",
    "fits",
    "matches_node_affinity",
    "matches_node_selector",
    "pod_constraints",
    "pod_namespace",
    "tolerates",
    "untolerated_taints",
]

#: Taint effects that keep a pod off a node; PreferNoSchedule only lowers a node's score.
BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True, slots=True)
class PodConstraints:
    """Where the pod built for a task on one cluster may be scheduled."""

    tolerations: tuple[Toleration, ...]
    node_selector: Mapping[str, str]
    required_terms: tuple[NodeSelectorTerm, ...] | None
    #: Keys on which the task's ``node_selector`` and the cluster's default disagree.
    selector_conflicts: tuple[str, ...] = ()

    @property
    def per_node(self) -> bool:
        """Whether selector or affinity name per-node labels, so shapes cannot decide."""
        if any(key in IDENTITY_LABELS for key in self.node_selector):
            return True
        for term in self.required_terms or ():
            if term.match_fields:
                return True
            if any(r.key in IDENTITY_LABELS for r in term.match_expressions):
                return True
        return False


def _unique(tolerations: Iterable[Toleration]) -> tuple[Toleration, ...]:
    return tuple(dict.fromkeys(tolerations))


def pod_constraints(task: TaskSpec, defaults: PodDefaults) -> PodConstraints:
    """Tolerations, node selector and node affinity of the pod ``podspec`` will build.

    Tolerations: the task's, then the cluster's, then the cluster's GPU tolerations when the
    task needs GPUs. Node selector: the cluster's default pins its keys (operators use it to
    confine dispatched pods to a pool); the task may add keys, and a key on which both
    disagree is reported in ``selector_conflicts``.
    """
    tolerations = list(task.tolerations) + list(defaults.tolerations)
    if task.gpus:
        tolerations += defaults.gpu_tolerations
    conflicts = tuple(
        sorted(
            key
            for key, value in task.node_selector.items()
            if key in defaults.node_selector and defaults.node_selector[key] != value
        )
    )
    return PodConstraints(
        tolerations=_unique(tolerations),
        node_selector={**task.node_selector, **defaults.node_selector},
        required_terms=task.affinity.required_terms if task.affinity else None,
        selector_conflicts=conflicts,
    )


def pod_namespace(task: TaskSpec, defaults: PodDefaults) -> str:
    """The task's namespace when the cluster allows it, else the cluster's."""
    if task.namespace and task.namespace in defaults.allowed_namespaces:
        return task.namespace
    return defaults.namespace


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """``Toleration.ToleratesTaint`` from k8s.io/api/core/v1."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator is TolerationOperator.EXISTS:
        return True
    return toleration.value == taint.value


def untolerated_taints(
    taints: Iterable[Taint], tolerations: Iterable[Toleration]
) -> tuple[Taint, ...]:
    """The taints that keep a pod with ``tolerations`` off the node."""
    tolerations = tuple(tolerations)
    return tuple(
        taint
        for taint in taints
        if taint.effect in BLOCKING_EFFECTS and not any(tolerates(t, taint) for t in tolerations)
    )


def matches_node_selector(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _requirement_matches(requirement: NodeSelectorRequirement, value: str | None) -> bool:
    op = requirement.operator
    if op is SelectorOperator.IN:
        return value is not None and value in requirement.values
    if op is SelectorOperator.NOT_IN:
        return value is None or value not in requirement.values
    if op is SelectorOperator.EXISTS:
        return value is not None
    if op is SelectorOperator.DOES_NOT_EXIST:
        return value is None
    # Gt/Lt compare integers; a missing or non-integer label never matches.
    try:
        have, bound = int(value or ""), int(requirement.values[0])
    except ValueError:
        return False
    return have > bound if op is SelectorOperator.GT else have < bound


def _term_matches(term: NodeSelectorTerm, labels: Mapping[str, str], node_name: str) -> bool:
    if not term.match_expressions and not term.match_fields:
        return False  # an empty term matches no node
    return all(_requirement_matches(r, labels.get(r.key)) for r in term.match_expressions) and all(
        _requirement_matches(r, node_name) for r in term.match_fields
    )


def matches_node_affinity(
    terms: tuple[NodeSelectorTerm, ...] | None, labels: Mapping[str, str], node_name: str = ""
) -> bool:
    """Required node affinity: no terms match everything; otherwise any term (ORed)."""
    if terms is None:
        return True
    return any(_term_matches(term, labels, node_name) for term in terms)


def fits(requests: Iterable[tuple[str, int]], free: Mapping[str, int]) -> bool:
    """NodeResourcesFit: every requested amount, extended resources and pod slots included."""
    return all(free.get(name, 0) >= amount for name, amount in requests)
