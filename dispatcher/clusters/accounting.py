"""One cluster's account of room: nodes, the pods bound to them, and assumed pods.

The ``ClusterCache`` keeps one ``ClusterAccount`` per cluster, under that cluster's lock,
and feeds it the informers' deltas (``set_node``, ``remove_node``, ``count_pod``) and the
dispatcher's assumptions (``assume``, ``drop``, ``expire``, ``settle``). Every change is
paid in proportion to what it touches, never to the cluster's size:

- nodes are kept grouped by ``shape_key`` (what a ``NodeShape`` shares), each group with
  the count of its nodes per free vector (``free_vector``); a change marks its node
  *stale*, and ``state()`` refreshes the stale nodes, re-assembles only the shapes they
  belong to (``NodeShape.assemble``: O(distinct free vectors)) and reuses the others;
- assumptions are indexed by pod name, by node, and by expiry (a heap): ``assume`` and
  ``drop`` are O(1) besides choosing a node, ``expire`` O(log n) per assumption expired,
  and ``settle`` looks only at the nodes touched since it last ran;
- ``choose_node`` plays kube-scheduler over shapes: taints, selector and affinity once per
  shape (per node only for per-node labels), then over the shape's distinct free vectors
  (O(shapes x distinct vectors)), picking what the per-node scan would pick.

No I/O and no locking of its own: the caller holds the cluster's lock.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from dispatcher.clusters.watching import object_key
from dispatcher.core import ClusterInfo, ClusterState, Health, NodeInfo, pod_requests, quantity
from dispatcher.core.dependencies import NamespaceView
from dispatcher.core.scheduling import (
    PodConstraints,
    fits,
    matches_node_affinity,
    matches_node_selector,
    untolerated_taints,
)
from dispatcher.core.snapshot import (
    ClusterRefusal,
    FreeVector,
    NodeShape,
    free_vector,
    is_terminated,
    shape_key,
)
from dispatcher.core.spec import Affinity, Toleration

__all__ = ["Assumed", "ClusterAccount", "add_amounts", "is_bound", "requests_with_slot"]

log = structlog.get_logger(__name__)

_SCORED_RESOURCES = (quantity.CPU, quantity.MEMORY)


def add_amounts(total: dict[str, int], more: Mapping[str, int], sign: int = 1) -> None:
    """``total += sign * more``, per resource, dropping amounts that reach zero."""
    for name, amount in more.items():
        value = total.get(name, 0) + sign * amount
        if value:
            total[name] = value
        else:
            total.pop(name, None)


@dataclass(slots=True)
class Assumed:
    """A pod created (or about to be) that the informers have not yet seen bound."""

    name: str
    namespace: str
    pod: Mapping[str, Any]
    requests: dict[str, int]
    node: str | None
    expires: float
    #: Order of ``assume`` calls: settle moves the latest assumptions first.
    seq: int


class _Group:
    """The nodes of one shape, kept so that the shape is re-assembled without a scan."""

    __slots__ = ("built", "frees", "members", "names", "vectors")

    def __init__(self) -> None:
        #: Node name -> ``NodeInfo`` with its usage.
        self.members: dict[str, NodeInfo] = {}
        #: Member names, sorted (changes only when a node joins or leaves).
        self.names: list[str] = []
        #: Node name -> its free vector; free vector -> the nodes that have it.
        self.frees: dict[str, FreeVector] = {}
        self.vectors: dict[FreeVector, set[str]] = {}
        self.built: NodeShape | None = None

    def put(self, info: NodeInfo) -> None:
        name = info.name
        if name not in self.members:
            bisect.insort(self.names, name)
        else:
            self._unvector(name)
        self.members[name] = info
        vector = free_vector(info)
        self.frees[name] = vector
        self.vectors.setdefault(vector, set()).add(name)
        self.built = None

    def remove(self, name: str) -> None:
        if self.members.pop(name, None) is None:
            return
        self._unvector(name)
        del self.names[bisect.bisect_left(self.names, name)]
        self.built = None

    def _unvector(self, name: str) -> None:
        vector = self.frees.pop(name)
        holders = self.vectors[vector]
        holders.discard(name)
        if not holders:
            del self.vectors[vector]

    def shape(self) -> NodeShape:
        if self.built is None:
            members = tuple(map(self.members.__getitem__, self.names))
            counts = {vector: len(names) for vector, names in self.vectors.items()}
            self.built = NodeShape.assemble(members, counts)
        return self.built

    def template(self) -> NodeInfo:
        """Any member: they agree on everything but name, identity labels and usage."""
        return self.members[self.names[0]]


def is_bound(pod: Mapping[str, Any]) -> bool:
    """Whether the scheduler (or the manifest) put the pod on a node."""
    return bool((pod.get("spec") or {}).get("nodeName"))


class ClusterAccount:
    """Nodes, usage and assumptions of one cluster; see the module docstring."""

    def __init__(self, info: ClusterInfo) -> None:
        self.info = info
        #: Node name -> node as listed (``used`` empty).
        self.nodes: dict[str, NodeInfo] = {}
        #: Node name -> requests of the pods bound to it, as the informers saw them.
        self.usage: dict[str, dict[str, int]] = {}
        #: (informer, pod key) -> (node, requests) of every pod counted in ``usage``.
        self.pod_usage: dict[tuple[str, str], tuple[str, dict[str, int]]] = {}
        #: Pod name -> assumption; node -> the assumptions counted there (by name), and
        #: their requests summed; the assumptions counted nowhere (by name).
        self.assumed: dict[str, Assumed] = {}
        self.on_node: dict[str, dict[str, Assumed]] = {}
        self.assumed_usage: dict[str, dict[str, int]] = {}
        self.unplaced: dict[str, Assumed] = {}
        self._expiry: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        #: Shape key -> group; node name -> its shape key.
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self._group_of: dict[str, tuple[Any, ...]] = {}
        #: Nodes whose ``NodeInfo`` must be recomputed; nodes ``settle`` must look at.
        self.stale: set[str] = set()
        self._unsettled: set[str] = set()
        #: Moves with every change; ``generation`` only with those that may let a waiting
        #: task run (``ClusterState.generation``).
        self.version = 0
        self.generation = 0
        self._built: tuple[int, ClusterState] | None = None

    # ----- changes ------------------------------------------------------------------------
    def touch(self, *nodes: str | None, grows: bool = True) -> None:
        """Something routing sees changed (on ``nodes``, if named); ``grows=False``: it
        only took room."""
        self.version += 1
        if grows:
            self.generation += 1
        for node in nodes:
            if node:
                self.stale.add(node)
                self._unsettled.add(node)

    def set_node(self, info: NodeInfo) -> bool:
        """A node as listed (``used`` ignored); whether anything routing sees changed."""
        base = replace(info, used={}) if info.used else info
        if self.nodes.get(base.name) == base:
            return False
        self.nodes[base.name] = base
        self.touch(base.name)
        return True

    def remove_node(self, name: str) -> bool:
        if self.nodes.pop(name, None) is None:
            return False
        self.touch(name)
        return True

    def count_pod(self, source: str, key: str, pod: Mapping[str, Any] | None) -> bool:
        """Account a pod's current state (``None``: gone); returns whether usage changed."""
        counted: tuple[str, dict[str, int]] | None = None
        if pod is not None and is_bound(pod) and not is_terminated(pod):
            counted = (str(pod["spec"]["nodeName"]), requests_with_slot(pod))
        before = self.pod_usage.get((source, key))
        if before == counted:
            return False
        if before is not None:
            add_amounts(self.usage.setdefault(before[0], {}), before[1], -1)
            self.touch(before[0])
        if counted is not None:
            add_amounts(self.usage.setdefault(counted[0], {}), counted[1])
            self.touch(counted[0], grows=False)
            self.pod_usage[(source, key)] = counted
        else:
            self.pod_usage.pop((source, key), None)
        return True

    # ----- assumptions --------------------------------------------------------------------
    def assume(
        self, name: str, namespace: str, pod: Mapping[str, Any], expires: float
    ) -> str | None:
        """Count ``pod`` until it is seen bound (or dropped, or ``expires``); the node it is
        counted on (``None``: it fits nowhere now and counts in the queue depth)."""
        replaced = self.drop(name)
        requests = requests_with_slot(pod)
        node = (pod.get("spec") or {}).get("nodeName") or self.choose_node(pod, requests)
        assumed = Assumed(name, namespace, pod, requests, node, expires, next(self._seq))
        self.assumed[name] = assumed
        heapq.heappush(self._expiry, (expires, assumed.seq, name))
        self._place(assumed, node)
        self.touch(node, grows=False)
        if replaced and self.unplaced:
            # The earlier assumption's room may be what one that fitted nowhere waited for.
            self.settle()
        return node

    def drop(self, name: str, replaced_by: tuple[str, Mapping[str, int]] | None = None) -> bool:
        """Stop counting an assumption; whether there was one. ``replaced_by``: the node
        and requests its pod counts with now (seen bound), if it does."""
        assumed = self.assumed.pop(name, None)
        if assumed is None:
            return False
        if (
            replaced_by is None
            or replaced_by[0] != assumed.node
            or any(replaced_by[1].get(r, 0) < amount for r, amount in assumed.requests.items())
        ):
            # Room may have been given back (the pod went, or landed elsewhere).
            self.generation += 1
        self._unplace(assumed)
        self.unplaced.pop(name, None)
        # Its entry in the expiry heap is skipped when it comes up (``expire``).
        return True

    def expire(self, now: float) -> list[str]:
        """Drop the assumptions whose time is up; their names."""
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            _, seq, name = heapq.heappop(self._expiry)
            assumed = self.assumed.get(name)
            if assumed is not None and assumed.seq == seq:
                self.drop(name)
                expired.append(name)
        return expired

    def _place(self, assumed: Assumed, node: str | None) -> None:
        assumed.node = node
        if node is None:
            self.unplaced[assumed.name] = assumed
            return
        self.unplaced.pop(assumed.name, None)
        self.on_node.setdefault(node, {})[assumed.name] = assumed
        add_amounts(self.assumed_usage.setdefault(node, {}), assumed.requests)
        self.stale.add(node)
        self._unsettled.add(node)

    def _unplace(self, assumed: Assumed) -> None:
        node = assumed.node
        if node is None:
            return
        on = self.on_node.get(node)
        if on is not None:
            on.pop(assumed.name, None)
            if not on:
                del self.on_node[node]
        add_amounts(self.assumed_usage.setdefault(node, {}), assumed.requests, -1)
        if not self.assumed_usage[node]:
            del self.assumed_usage[node]
        self.stale.add(node)
        self._unsettled.add(node)
        assumed.node = None

    def settle(self) -> None:
        """Keep assumptions where the scheduler can still put their pods.

        The scheduler may bind a pod elsewhere than assumed; the real pod then counts on
        its node, and an assumption sharing that node may no longer fit. Left there, the
        node would be over-committed while the assumed node looks free: a window for a
        double booking. Such assumptions (the latest first) are placed again, and
        assumptions that fitted nowhere get a node when one frees up, as their pods will.
        Only nodes changed since the last ``settle`` are looked at.
        """
        touched, self._unsettled = self._unsettled, set()
        moved = False
        for node in touched:
            on = self.on_node.get(node)
            if not on:
                continue
            latest_last = sorted(on.values(), key=lambda a: a.seq)
            while latest_last and self._overcommitted(node):
                assumed = latest_last.pop()
                self._unplace(assumed)
                self.unplaced[assumed.name] = assumed
                moved = True
                self.generation += 1
        if self.unplaced and (touched or moved):
            for assumed in sorted(self.unplaced.values(), key=lambda a: a.seq):
                chosen = self.choose_node(assumed.pod, assumed.requests)
                if chosen is not None:
                    self._place(assumed, chosen)
                    moved = True
        # What ``_place`` and ``_unplace`` touched was settled just now.
        self._unsettled.clear()
        if moved:
            self.version += 1

    def _overcommitted(self, node: str) -> bool:
        info = self.node_info(node)
        return info is None or any(amount < 0 for amount in info.free.values())

    # ----- reading ------------------------------------------------------------------------
    def node_info(self, name: str) -> NodeInfo | None:
        """The node with its usage (assumptions included), or ``None`` if not known."""
        if name in self.stale:
            self._refresh(name)
        key = self._group_of.get(name)
        return None if key is None else self._groups[key].members[name]

    def _refresh(self, name: str) -> None:
        self.stale.discard(name)
        old_key = self._group_of.pop(name, None)
        if old_key is not None:
            group = self._groups[old_key]
            group.remove(name)
            if not group.members:
                del self._groups[old_key]
        base = self.nodes.get(name)
        if base is None:
            return
        used = dict(self.usage.get(name) or {})
        add_amounts(used, self.assumed_usage.get(name) or {})
        key = shape_key(base)
        self._group_of[name] = key
        # Built field by field: ``dataclasses.replace`` costs several times more here.
        info = NodeInfo(
            name=base.name,
            allocatable=base.allocatable,
            used=used,
            labels=base.labels,
            taints=base.taints,
            ready=base.ready,
            unschedulable=base.unschedulable,
        )
        self._groups.setdefault(key, _Group()).put(info)

    def _refresh_all(self) -> None:
        for name in list(self.stale):
            self._refresh(name)

    def state(
        self,
        health: Health,
        refusal: ClusterRefusal | None,
        objects: Mapping[str, NamespaceView] | None,
    ) -> ClusterState:
        """The cluster as routing sees it; re-assembled only where something changed.

        The caller bumps ``version`` (``touch``) when health, refusal or objects change.
        """
        if self._built is not None and self._built[0] == self.version:
            return self._built[1]
        self._refresh_all()
        state = ClusterState.assemble(
            self.info,
            health=health,
            shapes=[group.shape() for group in self._groups.values()],
            queue_depth=len(self.unplaced),
            refusal=refusal,
            objects=objects,
            generation=self.generation,
        )
        self._built = (self.version, state)
        return state

    def choose_node(self, pod: Mapping[str, Any], requests: Mapping[str, int]) -> str | None:
        """The node kube-scheduler would most likely pick now, or ``None`` if none fits:
        ready, schedulable, tolerated, selected, with room, most free CPU and memory after
        placing ("LeastAllocated"), the first name among equals."""
        spec = pod.get("spec") or {}
        try:
            tolerations = tuple(Toleration.model_validate(t) for t in spec.get("tolerations") or ())
            affinity = spec.get("affinity")
            terms = Affinity.model_validate(affinity).required_terms if affinity else None
        except ValueError:
            log.warning("cache.assume_constraints_unreadable", cluster=self.info.name)
            return None
        constraints = PodConstraints(tolerations, spec.get("nodeSelector") or {}, terms)
        wanted = tuple(requests.items())
        self._refresh_all()
        best: tuple[float, str] | None = None
        for group in self._groups.values():
            template = group.template()
            if template.unschedulable or not template.ready:
                continue
            if untolerated_taints(template.taints, constraints.tolerations):
                continue
            for score, name in self._group_candidates(group, template, constraints, wanted):
                # Highest score wins; among equals the first name, like a stable sort.
                if best is None or (-score, name) < (-best[0], best[1]):
                    best = (score, name)
        return best[1] if best else None

    @staticmethod
    def _group_candidates(
        group: _Group,
        template: NodeInfo,
        constraints: PodConstraints,
        wanted: tuple[tuple[str, int], ...],
    ) -> list[tuple[float, str]]:
        """The best (score, node) of each free vector of the group that fits."""
        selector, terms = constraints.node_selector, constraints.required_terms
        allowed: set[str] | None = None
        if constraints.per_node:
            # Only here are nodes visited one by one: the task names a per-node label.
            allowed = {
                name
                for name, info in group.members.items()
                if matches_node_selector(selector, info.labels)
                and matches_node_affinity(terms, info.labels, name)
            }
        elif not matches_node_selector(selector, template.labels) or not matches_node_affinity(
            terms, template.labels
        ):
            return []
        found = []
        allocatable = template.allocatable
        for vector, holders in group.vectors.items():
            free = dict(vector)
            if not fits(wanted, free):
                continue
            names = holders if allowed is None else holders & allowed
            if not names:
                continue
            requested = dict(wanted)
            shares = [
                (free.get(r, 0) - requested.get(r, 0)) / allocatable[r]
                for r in _SCORED_RESOURCES
                if allocatable.get(r)
            ]
            found.append((sum(shares) / len(shares) if shares else 0.0, min(names)))
        return found


def requests_with_slot(pod: Mapping[str, Any]) -> dict[str, int]:
    """What the pod takes on its node, the pod slot included (as ``usage_by_node``)."""
    try:
        requests = pod_requests(pod)
    except ValueError:
        log.warning("cache.pod_requests_unreadable", pod=object_key(pod))
        requests = {}
    requests[quantity.PODS] = requests.get(quantity.PODS, 0) + 1
    return requests
