"""The ``ClusterCache``: every cluster's nodes and pods, kept current by informers.

With ``check_dependencies`` (the default), four more informers per task namespace keep a
metadata-only view of its Secrets, ConfigMaps, PVCs and ServiceAccounts: names, and the
key names of Secrets and ConfigMaps, never a value (``dependency_metadata``); the
snapshot carries it as ``ClusterState.objects`` for routing. They count neither in the
cluster's health nor in ``wait_synced``: until one lists (RBAC missing, say), routing
makes only the tasks that need it wait, and says why.

Per cluster, three informers (nodes; our pods, every phase, for job tracking; everybody
else's pods that still hold resources, for capacity; the last can be switched off with
``client.watch_all_pods: false``) feed an incremental account (``accounting``): per node
its ``NodeInfo`` and the requests of the pods bound to it, nodes grouped by shape. Each
change bumps the cluster's version; ``snapshot()`` re-assembles only the node shapes whose
nodes changed, and reuses a cluster's ``ClusterState`` while its version stays, so neither
a placement nor a routing decision copies every node of a cluster. The state's
``generation`` moves only with changes that may let a waiting task run (not with a pod
assumed, or seen bound where it was assumed).

Pods we just created but the informers have not yet seen bound are *assumed*
(``assume``), so two quick placements cannot both take the same free GPUs:

- a manifest with ``spec.nodeName`` counts on that node;
- otherwise the cache plays the scheduler: among the nodes the pod may go to (readiness,
  taints and tolerations, node selector, required node affinity, room left after earlier
  assumptions) it takes the one kube-scheduler's default scoring prefers (most free CPU
  and memory, "LeastAllocated"), and counts the pod there. Routing then sees the free
  room actually left on each node shape: the best approximation of where the pod will land,
  expressed with the core's own types (``NodeInfo.used``), with no change to routing;
- a pod that fits no node now counts in the cluster's ``queue_depth`` instead, which the
  least-loaded strategy weighs.

An assumption ends when the informer sees the pod bound (its real requests count from
then), finished or deleted, on ``forget``, or after ``assume_ttl_seconds``.

Listeners get ``(cluster, kind, event_type, obj)``:

- ``("pod", ADDED|MODIFIED|DELETED, pod)`` for each change of one of our pods;
- ``("node", ADDED|MODIFIED|DELETED, node)`` when a node appears, goes, or changes in
  anything routing looks at (not on status heartbeats);
- ``("capacity", ADDED|MODIFIED|DELETED, None)`` when someone else's pod takes or frees
  resources (DELETED: it freed them), or an assumption expired (DELETED);
- ``("health", "up"|"degraded"|"down"|"credentials-unavailable"|"refused", None)`` when
  the cluster's health (or the reason it is refused) changes (``status(cluster)`` says why);
- ``("dependency", ADDED|MODIFIED|DELETED|"listed", None)`` when a Secret, ConfigMap,
  PVC or ServiceAccount of a task namespace appears, goes or changes its key names, and
  after each list of them (no object is passed: listeners do not need one);
- ``("listed", "first"|"relist", None)`` after our pods were listed (the first time, or
  again after a broken or expired watch) and the list's events delivered: from then on
  ``managed_pods(cluster)`` is the whole truth, and a pod that was created and deleted
  between two lists, which no event reports, is known to be gone by its absence.

Health: ``health(cluster)`` is ``Health.DOWN`` only when the cluster's API server is in
trouble (``dispatcher.clusters.health``); ``Health.CREDENTIALS_UNAVAILABLE`` when we cannot
get or use credentials for it, which must not move its running work elsewhere;
``Health.REFUSED`` when our rules refuse what Vault holds for it (``status(cluster).refusal``
says which rule); ``wait_synced`` does not wait for a refused cluster.
``status(cluster)`` adds the machine reason and a message for an SRE. When a request finds
credentials unavailable, the cluster's open watches are reconnected: their reconnection
(with fresh credentials, or failing for want of them) is what tells when they are back.

They run on informer and timer threads, outside the cache's locks: keep them short.

I/O: through each cluster's ``Connection`` on the informers' threads; one timer thread
re-evaluates health, expires assumptions and publishes capacity metrics (no I/O).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from dispatcher import metrics
from dispatcher.clusters.accounting import ClusterAccount, is_bound
from dispatcher.clusters.connection import ClientProvider, Connection, NamespacedResource
from dispatcher.clusters.health import ClusterHealth, HealthPolicy, HealthStatus
from dispatcher.clusters.watching import DELETED, Informer, WatchOptions, object_key
from dispatcher.core import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    ClusterInfo,
    ClusterState,
    Health,
    NodeInfo,
    Snapshot,
    managed_pods_selector,
    quantity,
)
from dispatcher.core.dependencies import DependencyKind, NamespaceView
from dispatcher.core.snapshot import ClusterRefusal, is_terminated
from dispatcher.settings import ClusterSettings, Settings
from dispatcher.supervise import Supervisor

__all__ = ["CacheOptions", "ClusterCache", "Listener"]


def _refusal(status: HealthStatus) -> ClusterRefusal | None:
    """The structured refusal of a ``REFUSED`` status: its reason code, and its words
    without the ``refused: <reason>:`` that the status message starts with."""
    if status.refusal is None:
        return None
    words = status.message.removeprefix("refused: ").removeprefix(f"{status.refusal.value}: ")
    return ClusterRefusal(status.refusal, words)


log = structlog.get_logger(__name__)

#: ``listener(cluster, kind, event_type, obj)``; see the module docstring for the contract.
Listener = Callable[[str, str, str, dict[str, Any] | None], None]

NODES = "nodes"
MANAGED_PODS = "pods-managed"
OTHER_PODS = "pods-other"

#: Pods that still hold resources on their node.
RUNNING_PODS_FIELD_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"
#: Everything not ours: pods without the label and pods some other tool labelled.
OTHER_PODS_LABEL_SELECTOR = f"{MANAGED_BY_LABEL}!={MANAGED_BY_VALUE}"

#: The dependency kinds watched in each task namespace, by their resource's plural.
#: PVCs and ServiceAccounts come as ``PartialObjectMetadata`` (no spec at all); Secrets
#: and ConfigMaps whole, because their key names are in ``data``: ``dependency_metadata``
#: keeps the names and drops every value on arrival.
DEPENDENCY_RESOURCES: Mapping[DependencyKind, tuple[Any, bool]] = {
    DependencyKind.SECRET: ("secrets", False),
    DependencyKind.CONFIG_MAP: ("configmaps", False),
    DependencyKind.PERSISTENT_VOLUME_CLAIM: ("persistentvolumeclaims", True),
    DependencyKind.SERVICE_ACCOUNT: ("serviceaccounts", True),
}


def dependency_metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a Secret, ConfigMap, PVC or ServiceAccount: its name,
    namespace, uid and resourceVersion, and the names of its ``data``/``binaryData`` keys.

    Everything else goes, annotations too: ``kubectl apply`` copies a whole Secret,
    values included, into ``kubectl.kubernetes.io/last-applied-configuration``.
    """
    metadata = obj.get("metadata") or {}
    keys = sorted({*(obj.get("data") or {}), *(obj.get("binaryData") or {})})
    return {
        "metadata": {
            name: metadata[name]
            for name in ("name", "namespace", "uid", "resourceVersion")
            if name in metadata
        },
        "keys": keys,
    }


def task_namespaces(settings: ClusterSettings) -> tuple[str, ...]:
    """The namespaces pods go to in this cluster (``scheduling.pod_namespace``)."""
    defaults = settings.pod_defaults
    return tuple(dict.fromkeys((defaults.namespace, *defaults.allowed_namespaces)))


def _dependency_watch(kind: DependencyKind, namespace: str) -> str:
    return f"deps-{DEPENDENCY_RESOURCES[kind][0]}-{namespace}"


#: How often ``wait_synced`` looks whether a cluster not synced yet was refused meanwhile.
_SYNC_POLL = 0.1


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """How the cache watches, judges health and keeps assumptions."""

    health: HealthPolicy = field(default_factory=HealthPolicy)
    watch: WatchOptions = field(default_factory=WatchOptions)
    #: An assumed pod not seen bound within this time stops counting.
    assume_ttl_seconds: float = 60.0
    #: Period of the timer thread (health timeouts, assumption expiry, capacity metrics).
    tick_seconds: float = 0.5


class _Cluster:
    """Everything the cache knows about one cluster; guarded by ``lock``."""

    def __init__(
        self, settings: ClusterSettings, connection: Connection, health: ClusterHealth
    ) -> None:
        self.name = settings.name
        self.info: ClusterInfo = settings.info()
        self.settings = settings
        self.connection = connection
        self.health = health
        self.informers: dict[str, Informer] = {}
        self.lock = threading.Lock()
        #: Nodes, usage and assumptions, kept incrementally (``accounting``).
        self.account = ClusterAccount(self.info)
        self.published = -1
        #: (namespace, kind) -> the informer of that kind's objects there.
        self.dependency_informers: dict[tuple[str, DependencyKind], Informer] = {}

    def all_informers(self) -> list[Informer]:
        return [*self.informers.values(), *self.dependency_informers.values()]

    # ----- all below run under ``lock`` -------------------------------------------------
    @property
    def version(self) -> int:
        return self.account.version

    def changed(self, *nodes: str | None) -> None:
        self.account.touch(*nodes)

    def state(self) -> ClusterState:
        status = self.health.status()
        return self.account.state(
            status.health,
            _refusal(status),
            self.objects() if self.settings.check_dependencies else None,
        )

    def objects(self) -> dict[str, NamespaceView]:
        """Per task namespace, the dependency objects as the informers last listed them."""
        found: dict[str, dict[DependencyKind, dict[str, frozenset[str]]]] = {}
        unknown: dict[str, dict[DependencyKind, str]] = {}
        for (namespace, kind), informer in self.dependency_informers.items():
            found.setdefault(namespace, {})
            unknown.setdefault(namespace, {})
            if not informer.synced:
                error = informer.last_error
                unknown[namespace][kind] = (
                    f"not listed yet ({error})" if error else "not listed yet"
                )
                continue
            found[namespace][kind] = {
                str(item["metadata"].get("name", "")): frozenset(item.get("keys") or ())
                for item in informer.items()
            }
        return {
            namespace: NamespaceView(objects=found[namespace], unknown=unknown[namespace])
            for namespace in found
        }


class ClusterCache:
    """Nodes, pods and health of every cluster; produces ``Snapshot``\\ s for routing.

    ``clock`` (monotonic seconds) drives health timeouts, rate limiters and assumption
    expiry; ``draw`` the backoff jitter (``# fakes for tests``); ``supervisor`` runs the
    informers' threads (its ``healthy()`` answers for them).
    """

    def __init__(
        self,
        clusters: Settings | Iterable[ClusterSettings],
        provider: ClientProvider,
        *,
        options: CacheOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.options = options or CacheOptions()
        self.supervisor = supervisor or Supervisor()
        self._clock = clock
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self._clusters: dict[str, _Cluster] = {}
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._snapshot: tuple[tuple[int, ...], Snapshot] | None = None
        if isinstance(clusters, Settings):
            clusters = clusters.clusters
        for settings in clusters:
            if settings.name in self._clusters:
                raise ValueError(f"cluster {settings.name!r} is listed twice")
            self._clusters[settings.name] = self._make_cluster(settings, provider, draw)

    @classmethod
    def from_settings(
        cls, settings: Settings, provider: ClientProvider, **kwargs: Any
    ) -> ClusterCache:
        return cls(settings.clusters, provider, **kwargs)

    def _make_cluster(
        self, settings: ClusterSettings, provider: ClientProvider, draw: Callable[[], float]
    ) -> _Cluster:
        name = settings.name
        watches = {NODES: True, MANAGED_PODS: True}
        if settings.client.watch_all_pods:
            watches[OTHER_PODS] = False
        holder: list[_Cluster] = []
        health = ClusterHealth(
            name,
            self.options.health,
            watches,
            clock=self._clock,
            on_change=lambda old, new: self._on_health(holder[0], new),
        )
        connection = Connection(name, provider, settings.client, health=health, clock=self._clock)
        cluster = _Cluster(settings, connection, health)
        holder.append(cluster)

        def listed(first: bool) -> None:
            self._emit(name, "listed", "first" if first else "relist", None)

        def informer(
            watch: str, resource: str, label: str | None = None, fields: str | None = None
        ) -> Informer:
            return Informer(
                connection,
                "nodes" if resource == "nodes" else "pods",
                name=watch,
                handler=self._handler(cluster, watch),
                label_selector=label,
                field_selector=fields,
                options=self.options.watch,
                health=health,
                supervisor=self.supervisor,
                draw=draw,
                on_listed=listed if watch == MANAGED_PODS else None,
            )

        cluster.informers[NODES] = informer(NODES, "nodes")
        cluster.informers[MANAGED_PODS] = informer(MANAGED_PODS, "pods", managed_pods_selector())
        if settings.client.watch_all_pods:
            cluster.informers[OTHER_PODS] = informer(
                OTHER_PODS, "pods", OTHER_PODS_LABEL_SELECTOR, RUNNING_PODS_FIELD_SELECTOR
            )
        if settings.check_dependencies:
            for namespace in task_namespaces(settings):
                for kind, (plural, metadata_only) in DEPENDENCY_RESOURCES.items():
                    watch = _dependency_watch(kind, namespace)
                    # Apart from ``informers``, and without ``health``: a view that cannot
                    # be listed (RBAC not granted yet) holds back only the tasks that
                    # need it (their verdict says why), not the cluster or readiness.
                    cluster.dependency_informers[(namespace, kind)] = Informer(
                        connection,
                        NamespacedResource(plural, namespace, metadata_only),
                        name=watch,
                        handler=self._dependency_handler(cluster),
                        options=self.options.watch,
                        supervisor=self.supervisor,
                        draw=draw,
                        on_listed=lambda first: self._on_dependencies_listed(cluster),
                        transform=dependency_metadata,
                    )
        return cluster

    # ----- lifecycle -------------------------------------------------------------------
    @property
    def clusters(self) -> tuple[str, ...]:
        return tuple(self._clusters)

    def start(self) -> None:
        """Start every informer and the timer; returns at once (see ``wait_synced``)."""
        if self._timer is not None:
            return
        for cluster in self._clusters.values():
            for informer in cluster.all_informers():
                informer.start()
        self._timer = threading.Thread(target=self._tick_loop, name="kd-cache-timer", daemon=True)
        self._timer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the informers and the timer; waits up to ``timeout`` seconds for them."""
        self._stop.set()
        informers = [i for c in self._clusters.values() for i in c.all_informers()]
        for informer in informers:
            informer.stop()
        deadline = self._clock() + timeout
        for informer in informers:
            informer.join(max(0.0, deadline - self._clock()))
        if self._timer is not None:
            self._timer.join(max(0.0, deadline - self._clock()))

    def wait_synced(self, timeout: float, clusters: Iterable[str] | None = None) -> bool:
        """Wait until every informer (of ``clusters``, default all) listed once, or its
        cluster is ``Health.REFUSED``: a refused credential needs a person, not time, so
        waiting for it would only hold readiness back (``refused()`` names them)."""
        deadline = self._clock() + timeout
        names = list(clusters) if clusters is not None else list(self._clusters)
        for name in names:
            cluster = self._cluster(name)
            for informer in cluster.informers.values():
                while not informer.wait_synced(min(_SYNC_POLL, max(0.0, deadline - self._clock()))):
                    if cluster.health.current() is Health.REFUSED:
                        break
                    if self._clock() >= deadline:
                        return False
        return True

    def refused(self) -> tuple[str, ...]:
        """The clusters whose credentials are refused now."""
        return tuple(
            name for name, c in self._clusters.items() if c.health.current() is Health.REFUSED
        )

    def synced(self, cluster: str) -> bool:
        return all(i.synced for i in self._cluster(cluster).informers.values())

    # ----- reading ---------------------------------------------------------------------
    def snapshot(self, queue_depths: Mapping[str, int] | None = None) -> Snapshot:
        """Every cluster as routing sees it now; rebuilt only for clusters that changed.

        ``queue_depths`` adds the dispatcher's waiting tasks per cluster to the pods
        assumed without a node.
        """
        states = []
        versions: list[int] = []
        for cluster in self._clusters.values():
            synced = all(i.synced for i in cluster.informers.values())
            with cluster.lock:
                state = cluster.state()
                versions.extend((cluster.version, synced))
            # Until its first list, a cluster's nodes are unknown: routing must wait for
            # it rather than conclude it has no nodes.
            if not synced and state.health.routable:
                state = dataclasses.replace(state, health=Health.DOWN)
            states.append(state)
        if queue_depths:
            states = [
                dataclasses.replace(s, queue_depth=s.queue_depth + queue_depths[s.name])
                if queue_depths.get(s.name)
                else s
                for s in states
            ]
            return Snapshot.of(states)
        key = tuple(versions)
        cached = self._snapshot
        if cached is not None and cached[0] == key:
            return cached[1]
        snapshot = Snapshot.of(states)
        self._snapshot = (key, snapshot)
        return snapshot

    def state(self, cluster: str) -> ClusterState:
        view = self._cluster(cluster)
        with view.lock:
            return view.state()

    def health(self, cluster: str) -> Health:
        """``DOWN`` only when the cluster's API server is in trouble; see ``status``."""
        return self._cluster(cluster).health.current()

    def status(self, cluster: str) -> HealthStatus:
        """The cluster's health with its reason and a message (``credentials unavailable:
        ...``, ``3 consecutive failures, last: ...``)."""
        return self._cluster(cluster).health.status()

    def connection(self, cluster: str) -> Connection:
        return self._cluster(cluster).connection

    def managed_pods(self, cluster: str) -> list[dict[str, Any]]:
        """Our pods in ``cluster`` as last seen, every phase (shared dicts: read only)."""
        return self._cluster(cluster).informers[MANAGED_PODS].items()

    def informers(self, cluster: str) -> tuple[Informer, ...]:
        return tuple(self._cluster(cluster).informers.values())

    def dependency_informers(self, cluster: str) -> dict[tuple[str, DependencyKind], Informer]:
        """(task namespace, kind) -> the informer of the cluster's dependency view."""
        return dict(self._cluster(cluster).dependency_informers)

    def assumed(self, cluster: str) -> dict[str, str | None]:
        """Assumed pod name -> the node it is counted on (``None``: in the queue depth)."""
        view = self._cluster(cluster)
        with view.lock:
            return {name: a.node for name, a in view.account.assumed.items()}

    def _cluster(self, name: str) -> _Cluster:
        try:
            return self._clusters[name]
        except KeyError:
            raise KeyError(f"unknown cluster {name!r}") from None

    # ----- assumptions -----------------------------------------------------------------
    def assume(self, cluster: str, pod: Mapping[str, Any]) -> None:
        """Count ``pod`` (a manifest about to be created) on ``cluster`` until it is seen."""
        view = self._cluster(cluster)
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name", ""))
        namespace = str(metadata.get("namespace", ""))
        with view.lock:
            seen = view.informers[MANAGED_PODS].get(f"{namespace}/{name}")
            if seen is not None and (is_bound(seen) or is_terminated(seen)):
                return  # already counted as what it really is
            node = view.account.assume(
                name, namespace, pod, self._clock() + self.options.assume_ttl_seconds
            )
        log.debug("cache.assumed", cluster=cluster, pod=name, node=node)

    def forget(self, cluster: str, pod_name: str) -> None:
        """Stop counting an assumed pod (its creation failed, or it was given up)."""
        view = self._cluster(cluster)
        with view.lock:
            if view.account.drop(pod_name):
                view.changed()
                view.account.settle()

    # ----- listeners -------------------------------------------------------------------
    def add_listener(self, callback: Listener) -> None:
        with self._listeners_lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with self._listeners_lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def _emit(self, cluster: str, kind: str, event_type: str, obj: dict[str, Any] | None) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(cluster, kind, event_type, obj)
            except Exception:  # a listener's bug must not stop the informer
                log.exception("cache.listener_failed", cluster=cluster, kind=kind)

    # ----- informer events ---------------------------------------------------------------
    def _handler(
        self, cluster: _Cluster, watch: str
    ) -> Callable[[str, dict[str, Any], dict[str, Any] | None], None]:
        if watch == NODES:
            return lambda kind, obj, old: self._on_node(cluster, kind, obj)
        managed = watch == MANAGED_PODS
        return lambda kind, obj, old: self._on_pod(cluster, watch, managed, kind, obj)

    def _on_node(self, cluster: _Cluster, kind: str, node: dict[str, Any]) -> None:
        name = str((node.get("metadata") or {}).get("name", ""))
        with cluster.lock:
            if kind == DELETED:
                changed = cluster.account.remove_node(name)
            else:
                try:
                    info = NodeInfo.from_k8s(node)
                except ValueError as exc:
                    log.warning(
                        "cache.node_unreadable", cluster=cluster.name, node=name, error=str(exc)
                    )
                    return
                changed = cluster.account.set_node(info)
            if changed:
                cluster.account.settle()
        if changed:
            self._emit(cluster.name, "node", kind, node)

    def _on_pod(
        self, cluster: _Cluster, watch: str, managed: bool, kind: str, pod: dict[str, Any]
    ) -> None:
        key = object_key(pod)
        with cluster.lock:
            account = cluster.account
            changed = account.count_pod(watch, key, None if kind == DELETED else pod)
            if managed:
                name = str((pod.get("metadata") or {}).get("name", ""))
                assumed = account.assumed.get(name)
                if (
                    assumed is not None
                    and assumed.namespace == (pod.get("metadata") or {}).get("namespace", "")
                    and (kind == DELETED or is_bound(pod) or is_terminated(pod))
                ):
                    counted = account.pod_usage.get((watch, key))
                    changed = account.drop(name, replaced_by=counted) or changed
            if changed:
                # Only the pod's own counting moved (``count_pod``, ``drop`` judge
                # whether room grew).
                account.touch(grows=False)
                account.settle()
        if managed:
            self._emit(cluster.name, "pod", kind, pod)
        elif changed:
            self._emit(cluster.name, "capacity", kind, None)

    def _dependency_handler(
        self, cluster: _Cluster
    ) -> Callable[[str, dict[str, Any], dict[str, Any] | None], None]:
        def handle(kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            if old is not None and old.get("keys") == obj.get("keys") and kind != DELETED:
                return  # a change routing cannot see (labels, a value)
            with cluster.lock:
                cluster.changed()
            self._emit(cluster.name, "dependency", kind, None)

        return handle

    def _on_dependencies_listed(self, cluster: _Cluster) -> None:
        # The first list turns "not listed yet" into an answer, with or without events.
        with cluster.lock:
            cluster.changed()
        self._emit(cluster.name, "dependency", "listed", None)

    def _on_health(self, cluster: _Cluster, new: Health) -> None:
        with cluster.lock:
            cluster.changed()
        if new in (Health.CREDENTIALS_UNAVAILABLE, Health.REFUSED):
            # Streams opened earlier may still flow on an old credential; reopening them
            # finds out whether credentials can be had, and keeps finding out (backoff).
            disconnected = cluster.health.disconnected_watches()
            for name, informer in cluster.informers.items():
                if name not in disconnected:
                    informer.reconnect()
            for informer in cluster.dependency_informers.values():
                informer.reconnect()
        self._emit(cluster.name, "health", new.value, None)

    # ----- timer -----------------------------------------------------------------------
    def _tick_loop(self) -> None:
        while not self._stop.wait(self.options.tick_seconds):
            try:
                self.tick()
            except Exception:  # the timer must outlive any one bad tick
                log.exception("cache.tick_failed")

    def tick(self) -> None:
        """Health timeouts, assumption expiry, capacity metrics; the timer calls this."""
        now = self._clock()
        for cluster in self._clusters.values():
            cluster.health.refresh()
            with cluster.lock:
                expired = cluster.account.expire(now)
                if expired:
                    cluster.changed()
                    cluster.account.settle()
                state = cluster.state() if cluster.published != cluster.version else None
                cluster.published = cluster.version
            if expired:
                log.info("cache.assumptions_expired", cluster=cluster.name, pods=len(expired))
                self._emit(cluster.name, "capacity", DELETED, None)
            if state is not None:
                _publish_capacity(state)


def _publish_capacity(state: ClusterState) -> None:
    allocatable = {quantity.CPU: 0.0, quantity.MEMORY: 0.0}
    free = {quantity.CPU: 0.0, quantity.MEMORY: 0.0}
    gpus_allocatable: dict[str, float] = {}
    gpus_free: dict[str, float] = {}
    for shape in state.shapes:
        if not shape.ready:
            continue
        for resource in (quantity.CPU, quantity.MEMORY):
            allocatable[resource] += shape.capacity.get(resource, 0)
            free[resource] += shape.total_free.get(resource, 0)
        gpus = shape.capacity.get(quantity.GPU, 0)
        if gpus:
            model = shape.gpu_model or "unknown"
            gpus_allocatable[model] = gpus_allocatable.get(model, 0) + gpus
            gpus_free[model] = gpus_free.get(model, 0) + shape.total_free.get(quantity.GPU, 0)
    # CPU in cores, not millicores.
    allocatable[quantity.CPU] /= 1000
    free[quantity.CPU] /= 1000
    metrics.record_capacity(
        state.name,
        allocatable=allocatable,
        free=free,
        gpus_allocatable=gpus_allocatable,
        gpus_free=gpus_free,
    )
