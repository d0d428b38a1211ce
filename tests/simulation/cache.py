"""What one dispatcher process sees of the simulated clusters: its cache and connections.

``FakeCache`` stands in for ``ClusterCache`` (the ``Cache`` protocol): a cluster is synced
once listed; its view then follows the watch events the test delivers, drops, duplicates
or reorders (``events``, ``heads``, ``deliver``, ``drop``, ``duplicate``); a relist replaces
the view and reports the difference as events. Health follows the cluster's reachability
as the cache learns it. Snapshots are built with the core's own types from the view's pods
and the assumed ones, placed as the world's scheduler would place them.

``FakeConnection`` is one process's ``Connection`` to one cluster: every call goes to the
``FakeCluster``, which knows who called.

No I/O.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispatcher.clusters.connection import LogLines
from dispatcher.core import ClusterState, Health, NodeInfo, Snapshot, usage_by_node
from dispatcher.core.apierrors import api_error
from tests.simulation.world import (
    ASSUME_TTL,
    RELIST_DELAY,
    FakeCluster,
    add,
    choose_node,
    requests_with_slot,
)

if TYPE_CHECKING:
    from tests.simulation.world import World

__all__ = ["Event", "FakeCache", "FakeConnection", "Listener"]


@dataclass(frozen=True)
class Event:
    """A watch event on its way to one process's cache."""

    seq: int
    cluster: str
    kind: str  # "pod" | "health" | "listed"
    type: str  # ADDED / MODIFIED / DELETED, or up / down, or first / relist
    obj: dict[str, Any] | None
    relisted: bool = False  # from a list: the cache's view has it already

    @property
    def key(self) -> tuple[str, str, str]:
        if self.obj is None:
            return (self.cluster, self.kind, "")
        metadata = self.obj.get("metadata") or {}
        return (self.cluster, self.kind, f"{metadata.get('namespace')}/{metadata.get('name')}")

    def describe(self) -> str:
        if self.obj is None:
            return f"{self.cluster} {self.kind} {self.type}"
        phase = (self.obj.get("status") or {}).get("phase")
        return f"{self.cluster} {self.type} {self.key[2]} ({phase})"


Listener = Callable[[str, str, str, dict[str, Any] | None], None]


@dataclass
class _Assumed:
    pod: Mapping[str, Any]
    expires: float


class FakeConnection:
    """One process's connection to one cluster (the ``Connection`` protocol)."""

    def __init__(self, cluster: FakeCluster, caller: str) -> None:
        self._cluster = cluster
        self._caller = caller

    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._cluster.api_create(self._caller, namespace, manifest)

    def delete_pod(
        self, namespace: str, name: str, grace_period_seconds: int | None = None
    ) -> None:
        self._cluster.api_delete(self._caller, namespace, name, grace_period_seconds)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._cluster.api_read(self._caller, namespace, name)

    def list_pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self._cluster.api_list(self._caller, namespace)

    def pod_logs(
        self,
        namespace: str,
        name: str,
        container: str | None = None,
        follow: bool = False,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
    ) -> LogLines:
        del container, follow, since_seconds, tail_lines
        if self._cluster.api_read(self._caller, namespace, name) is None:
            raise api_error(
                self._cluster.name,
                f"read log of pod {namespace}/{name}",
                404,
                {"reason": "NotFound", "message": f'pods "{name}" not found'},
            )
        return LogLines(iter([f"sim log of {name}"]), response=None)


class FakeCache:
    """One dispatcher process's view of every cluster (the ``Cache`` protocol).

    Like ``ClusterCache``: a cluster is *synced* once listed; its view then follows the
    watch events delivered (``deliver``), and is replaced on a relist, which reports the
    difference as events. An event lost on the way (``drop``) breaks the watch: the cache
    lists again ``RELIST_DELAY`` later. Health follows the cluster's reachability, as the
    cache learns it (a ``health`` event). Snapshots count the view's pods and the assumed
    ones, placed as the scheduler would.
    """

    def __init__(self, world: World, process: str) -> None:
        self.world = world
        self.process = process
        self.events: list[Event] = []
        self.closed = False
        self._views: dict[str, dict[str, dict[str, Any]]] = {}
        self._watching: set[str] = set()
        self._health: dict[str, Health] = {}
        self._assumed: dict[str, dict[str, _Assumed]] = {c: {} for c in world.clusters}
        self._relist_due: dict[str, float] = {}
        self._listeners: list[Listener] = []
        self._version = 0
        self._built: tuple[int, Snapshot] | None = None
        for name, cluster in world.clusters.items():
            if cluster.reachable:
                self._health[name] = Health.UP
                self.relist(name)
            else:
                self._health[name] = Health.DOWN
        world.caches.append(self)

    # ----- the world feeds it -----------------------------------------------------------------
    def receive(self, cluster: str, event_type: str, pod: dict[str, Any]) -> None:
        if cluster in self._watching:
            self._queue(Event(self.world.next_seq(), cluster, "pod", event_type, pod))

    def lost(self, cluster: str) -> None:
        """The cluster stopped answering: the watch breaks, health goes down."""
        self._watching.discard(cluster)
        self._queue(Event(self.world.next_seq(), cluster, "health", Health.DOWN.value, None))

    def back(self, cluster: str) -> None:
        """The cluster answers again: list it, health comes back up."""
        self.relist(cluster)
        self._queue(Event(self.world.next_seq(), cluster, "health", Health.UP.value, None))

    def relist(self, cluster: str) -> None:
        """List the cluster's pods again (the informer after a broken watch)."""
        self._relist_due.pop(cluster, None)
        world_cluster = self.world.clusters[cluster]
        if not world_cluster.reachable:
            return
        fresh = {
            f"{p.namespace}/{p.name}": copy.deepcopy(p.obj) for p in world_cluster.pods.values()
        }
        first = cluster not in self._views
        old = self._views.get(cluster, {})
        # Watch events not delivered yet are superseded by the list.
        self.events = [e for e in self.events if not (e.cluster == cluster and e.kind == "pod")]
        for key, pod in fresh.items():
            before = old.get(key)
            if before is None:
                self._queue(Event(self.world.next_seq(), cluster, "pod", "ADDED", pod, True))
            elif before["metadata"].get("resourceVersion") != pod["metadata"].get(
                "resourceVersion"
            ):
                self._queue(Event(self.world.next_seq(), cluster, "pod", "MODIFIED", pod, True))
        for key, pod in old.items():
            if key not in fresh:
                self._queue(Event(self.world.next_seq(), cluster, "pod", "DELETED", pod, True))
        self._views[cluster] = fresh
        self._watching.add(cluster)
        # As the real cache does once the list's diff is out: the list is the whole truth.
        listed = "first" if first else "relist"
        self._queue(Event(self.world.next_seq(), cluster, "listed", listed, None))
        for name in [n for n, a in self._assumed[cluster].items() if self._settled(cluster, n, a)]:
            del self._assumed[cluster][name]
        self._changed()

    def tick(self, now: float) -> None:
        for cluster, due in list(self._relist_due.items()):
            if due <= now and self.world.clusters[cluster].reachable:
                self.relist(cluster)
        for assumed in self._assumed.values():
            for name in [n for n, a in assumed.items() if a.expires <= now]:
                del assumed[name]
                self._changed()

    def next_due(self) -> float | None:
        reachable = [d for c, d in self._relist_due.items() if self.world.clusters[c].reachable]
        return min(reachable, default=None)

    def _queue(self, event: Event) -> None:
        if not self.closed:
            self.events.append(event)

    def _changed(self) -> None:
        self._version += 1

    # ----- the test delivers ------------------------------------------------------------------
    def heads(self) -> list[int]:
        """Indices of events that may be delivered next: the oldest of each object (a watch
        keeps one object's events in order; different objects' events may interleave)."""
        seen: set[tuple[str, str, str]] = set()
        heads = []
        for index, event in enumerate(self.events):
            if event.key not in seen:
                seen.add(event.key)
                heads.append(index)
        return heads

    def deliver(self, index: int) -> Event:
        event = self.events.pop(index)
        self._apply(event)
        for listener in list(self._listeners):
            try:
                listener(event.cluster, event.kind, event.type, copy.deepcopy(event.obj))
            except Exception as exc:  # the real cache logs and goes on; here it is a finding
                self.world.violation(
                    f"{self.process}: listener raised on {event.describe()}: {exc!r}\n"
                    + "".join(traceback.format_exception(exc)[-6:])
                )
        return event

    def drop(self, index: int) -> Event:
        """The watch event is lost; the broken watch is noticed and the cluster listed
        again. A health event is the cache's own judgement, emitted in-process: it cannot
        be lost, so it is delivered instead."""
        event = self.events[index]
        if event.kind != "pod":
            first = next(i for i, e in enumerate(self.events) if e.key == event.key)
            return self.deliver(first)  # in order, as the cache emits them
        del self.events[index]
        self._relist_due.setdefault(event.cluster, self.world.clock() + RELIST_DELAY)
        return event

    def duplicate(self, index: int) -> Event:
        """The event comes twice in a row (a relist that found the same state)."""
        event = self.events[index]
        self.events.insert(
            index + 1,
            Event(
                self.world.next_seq(),
                event.cluster,
                event.kind,
                event.type,
                copy.deepcopy(event.obj),
                True,
            ),
        )
        return event

    def _apply(self, event: Event) -> None:
        if event.kind == "health":
            self._health[event.cluster] = Health(event.type)
            self._changed()
            return
        if event.obj is None:
            return
        metadata = event.obj.get("metadata") or {}
        key = f"{metadata.get('namespace')}/{metadata.get('name')}"
        view = self._views.setdefault(event.cluster, {})
        if not event.relisted:
            if event.type == "DELETED":
                view.pop(key, None)
            else:
                view[key] = copy.deepcopy(event.obj)
        name = str(metadata.get("name", ""))
        assumed = self._assumed[event.cluster].get(name)
        if assumed is not None and self._settled(event.cluster, name, assumed):
            del self._assumed[event.cluster][name]
        self._changed()

    def _settled(self, cluster: str, name: str, assumed: _Assumed) -> bool:
        namespace = (assumed.pod.get("metadata") or {}).get("namespace")
        seen = self._views.get(cluster, {}).get(f"{namespace}/{name}")
        if seen is None:
            return False
        phase = (seen.get("status") or {}).get("phase")
        return bool((seen.get("spec") or {}).get("nodeName")) or phase in ("Succeeded", "Failed")

    # ----- the Cache protocol -----------------------------------------------------------------
    @property
    def clusters(self) -> tuple[str, ...]:
        return tuple(self.world.clusters)

    def add_listener(self, callback: Listener) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def synced(self, cluster: str) -> bool:
        return cluster in self._views

    def health(self, cluster: str) -> Health:
        return self._health[cluster] if cluster in self._views else Health.DOWN

    def connection(self, cluster: str) -> FakeConnection:
        return FakeConnection(self.world.clusters[cluster], self.process)

    def managed_pods(self, cluster: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self._views.get(cluster, {}).values()]

    def assume(self, cluster: str, pod: Mapping[str, Any]) -> None:
        name = str((pod.get("metadata") or {}).get("name", ""))
        assumed = _Assumed(copy.deepcopy(dict(pod)), self.world.clock() + ASSUME_TTL)
        if not self._settled(cluster, name, assumed):
            self._assumed[cluster][name] = assumed
            self._changed()

    def forget(self, cluster: str, pod_name: str) -> None:
        if self._assumed[cluster].pop(pod_name, None) is not None:
            self._changed()

    def assumed(self, cluster: str) -> list[str]:
        return sorted(self._assumed[cluster])

    def state(self, cluster: str) -> ClusterState:
        found = self.snapshot().cluster(cluster)
        assert found is not None
        return found

    def snapshot(self, queue_depths: Mapping[str, int] | None = None) -> Snapshot:
        self.tick(self.world.clock())
        if self._built is None or self._built[0] != self._version:
            self._built = (self._version, self._build())
        snapshot = self._built[1]
        if queue_depths:
            return Snapshot.of(
                ClusterState(
                    s.info, s.health, s.shapes, s.queue_depth + queue_depths.get(s.name, 0)
                )
                for s in snapshot.clusters
            )
        return snapshot

    def _build(self) -> Snapshot:
        states = []
        for name, cluster in self.world.clusters.items():
            view = self._views.get(name)
            health = self.health(name)
            pods = list((view or {}).values())
            usage = usage_by_node(pods)
            nodes = {
                n: NodeInfo(
                    name=n,
                    allocatable=info.allocatable,
                    used=dict(usage.get(n, {})),
                    labels=info.labels,
                    taints=info.taints,
                    ready=info.ready,
                    unschedulable=info.unschedulable,
                )
                for n, info in cluster.nodes.items()
            }
            unplaced = 0
            for assumed in self._assumed[name].values():
                node = (assumed.pod.get("spec") or {}).get("nodeName") or choose_node(
                    nodes.values(), assumed.pod
                )
                if node is None or node not in nodes:
                    unplaced += 1
                    continue
                used = dict(nodes[node].used)
                add(used, requests_with_slot(assumed.pod))
                nodes[node] = NodeInfo(
                    name=node,
                    allocatable=nodes[node].allocatable,
                    used=used,
                    labels=nodes[node].labels,
                    taints=nodes[node].taints,
                    ready=nodes[node].ready,
                    unschedulable=nodes[node].unschedulable,
                )
            states.append(
                ClusterState.build(
                    cluster.info,
                    health=health,
                    nodes=nodes.values() if view is not None else (),
                    queue_depth=unplaced,
                )
            )
        return Snapshot.of(states)
