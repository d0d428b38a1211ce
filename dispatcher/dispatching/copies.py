"""Materialised dependencies: the Secrets and ConfigMaps the dispatcher copies into the
cluster a task is routed to, and deletes when the last job using them has ended.

``materialise(job, attempt)`` runs just before the attempt's pod is created, for the
attempt's cluster only. For each Secret or ConfigMap the pod names that the cluster's
``CopyPolicy`` may bring (``dispatcher.core.copies``), and each registry pull Secret the
task's images call for, it reads the object in the target namespace:

- absent: reads the source (the in-plane task namespace, or Vault KV) and creates the copy,
  labelled ``COPY_LABEL`` and annotated with its source, the source's version and the job;
- a copy already (another job's, or this job's before a restart): adds the job to its
  users and, if the source's version moved, replaces its values;
- someone else's object: left alone (it is there, which is all the pod needs).

Every update and delete carries the resourceVersion read, so two jobs (or a job and a
sweep) never lose each other's users: a conflict means read again and decide again.

``release(job_id, cluster, namespace)`` (the job ended) removes the job from the copies'
users and deletes a copy whose last user it was. ``sweep(cluster, live)`` (after a
restart, and every ``copy_sweep_interval_seconds``) does the same for every copy in the
cluster's task namespaces whose users are no longer live there, so nothing leaks when a
release was missed (a crash, an attempt moved to another cluster).

Values are read and written, never logged, counted or put in an error: messages name the
kind, namespace and name only.

I/O: Secrets and ConfigMaps through the cache's cluster connections; Vault KV through the
injected reader.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from dispatcher import metrics
from dispatcher.core import ClusterRole
from dispatcher.core.copies import (
    CopyPolicy,
    VaultObject,
    copies_selector,
    copy_manifest,
    is_copy,
    source_version,
    users,
    with_users,
)
from dispatcher.core.dependencies import DependencyKind, dependencies
from dispatcher.core.routing import registry_references
from dispatcher.core.scheduling import pod_namespace
from dispatcher.core.snapshot import ClusterState
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.dispatching.ports import Cache, Connection
from dispatcher.errors import ApiError, DispatcherError, ErrorKind

log = structlog.get_logger("dispatcher.dispatching")

__all__ = ["Copier", "CopyFailed", "KVReader"]

_PLURALS = {DependencyKind.SECRET: "secrets", DependencyKind.CONFIG_MAP: "configmaps"}
#: Reads and writes of one copy before giving up on others changing it meanwhile.
_TRIES = 5


_KINDS = {plural: kind.value for kind, plural in _PLURALS.items()}


def _count(cluster: str, kind: DependencyKind, action: str) -> None:
    metrics.DEPENDENCY_COPIES.labels(cluster=cluster, kind=kind.value, action=action).inc()


class CopyFailed(DispatcherError):
    """A dependency could not be brought to the cluster (its source is missing, or the
    copy kept changing); the pod is not created. Names objects, never values."""


class _KVEntry(Protocol):
    @property
    def value(self) -> str: ...
    @property
    def version(self) -> int | None: ...


class KVReader(Protocol):
    """Vault KV v2 reads (``dispatcher.credentials.VaultSession``)."""

    def read_kv(
        self,
        *,
        mount: str,
        path: str,
        field: str,
        version: int | None = None,
        cluster: str | None = None,
    ) -> _KVEntry: ...


@dataclass(frozen=True, slots=True)
class _Content:
    fields: dict[str, Any]
    origin: str
    version: str


class Copier:
    def __init__(self, cache: Cache, vault: KVReader | None = None) -> None:
        self._cache = cache
        self._vault = vault

    # ----- before the pod -------------------------------------------------------------
    def materialise(self, job: Job, attempt: Attempt) -> tuple[str, ...]:
        """Bring the attempt's copyable dependencies to its cluster; what was materialised,
        in words naming objects only. Raises ``CopyFailed`` or a ``ClusterError``."""
        snapshot = self._cache.snapshot()
        state = snapshot.cluster(attempt.cluster)
        if state is None or not state.info.copies.enabled:
            return ()
        policy = state.info.copies
        plane = next((c for c in snapshot.clusters if c.info.role is ClusterRole.IN_PLANE), None)
        references = (
            *dependencies(job.spec, state.info.pod_defaults),
            *registry_references(job.spec, state.info),
        )
        required: dict[tuple[DependencyKind, str], bool] = {}
        for ref in references:
            if ref.kind in _PLURALS and policy.may_copy(ref.kind, ref.name):
                key = (ref.kind, ref.name)
                required[key] = required.get(key, False) or not ref.optional
        done: list[str] = []
        for (kind, name), needed in sorted(required.items()):
            source = self._source_reader(job, policy, kind, name, plane, attempt.cluster)
            said = self._ensure(attempt, kind, name, job.id, source, needed=needed)
            if said is not None:
                done.append(said)
        if done:
            log.info(
                "job.dependencies_materialised",
                job_id=job.id,
                cluster=attempt.cluster,
                objects=done,
            )
        return tuple(done)

    def _source_reader(  # noqa: PLR0917 - private, called once
        self,
        job: Job,
        policy: CopyPolicy,
        kind: DependencyKind,
        name: str,
        plane: ClusterState | None,
        target: str,
    ) -> Callable[[], _Content | None]:
        vault = policy.vault_object(kind, name)
        if vault is not None:
            return lambda: self._from_vault(vault, target)
        if plane is None:
            raise CopyFailed(f"{kind.value} {name}: no in-plane cluster to copy it from")
        namespace = pod_namespace(job.spec, plane.info.pod_defaults)
        return lambda: self._from_plane(plane.name, namespace, kind, name)

    def _from_plane(
        self, cluster: str, namespace: str, kind: DependencyKind, name: str
    ) -> _Content | None:
        found = self._cache.connection(cluster).read_object(_PLURALS[kind], namespace, name)
        if found is None:
            return None
        version = str((found.get("metadata") or {}).get("resourceVersion") or "")
        return _Content(dict(found), f"{cluster}/{namespace}/{name}", version)

    def _from_vault(self, item: VaultObject, cluster: str) -> _Content:
        if self._vault is None:
            raise CopyFailed(f"{item.kind.value} {item.name}: Vault is not configured")
        data: dict[str, str] = {}
        versions: set[str] = set()
        for key in item.keys:
            entry = self._vault.read_kv(
                mount=item.mount, path=item.path, field=key, cluster=cluster
            )
            versions.add(str(entry.version))
            if item.kind is DependencyKind.SECRET:
                data[key] = base64.b64encode(entry.value.encode()).decode()
            else:
                data[key] = entry.value
        fields: dict[str, Any] = {"data": data}
        if item.kind is DependencyKind.SECRET:
            fields["type"] = item.secret_type
        return _Content(fields, item.origin(), ",".join(sorted(versions)))

    def _ensure(
        self,
        attempt: Attempt,
        kind: DependencyKind,
        name: str,
        job_id: str,
        read_source: Callable[[], _Content | None],
        *,
        needed: bool,
    ) -> str | None:
        connection = self._cache.connection(attempt.cluster)
        plural, namespace = _PLURALS[kind], attempt.namespace
        where = f"{kind.value} {name} in {attempt.cluster} namespace {namespace}"
        for _ in range(_TRIES):
            existing = connection.read_object(plural, namespace, name)
            if existing is not None and not is_copy(existing):
                return None  # the cluster's own object: not ours to change
            source = read_source()
            if source is None:
                if not needed:
                    return None
                raise CopyFailed(f"{where}: its copy source is gone")
            said = (
                f"{kind.value} {name} copied to {attempt.cluster}/{namespace} from {source.origin}"
            )
            try:
                if existing is None:
                    body = copy_manifest(
                        kind,
                        name,
                        namespace,
                        content=source.fields,
                        origin=source.origin,
                        version=source.version,
                        job_ids=(job_id,),
                    )
                    connection.create_object(plural, namespace, body)
                    _count(attempt.cluster, kind, "created")
                    return said
                holders = users(existing)
                if job_id in holders and source_version(existing) == source.version:
                    return said
                metadata = existing.get("metadata") or {}
                action = "joined"
                if source_version(existing) == source.version:
                    body = with_users(existing, holders | {job_id})
                else:
                    action = "updated"
                    body = copy_manifest(
                        kind,
                        name,
                        namespace,
                        content=source.fields,
                        origin=source.origin,
                        version=source.version,
                        job_ids=holders | {job_id},
                        resource_version=metadata.get("resourceVersion"),
                    )
                connection.replace_object(plural, namespace, body)
                _count(attempt.cluster, kind, action)
                return said
            except ApiError as exc:
                if exc.kind is ErrorKind.CONFLICT or exc.status == 404:
                    continue  # created, changed or deleted meanwhile: read again
                raise
        raise CopyFailed(f"{where}: changed by others {_TRIES} times while being copied")

    # ----- after the job ----------------------------------------------------------------
    def release(self, job_id: str, cluster: str, namespace: str) -> None:
        """The job no longer uses its copies in ``cluster``'s ``namespace``."""
        if not self._copies_enabled(cluster):
            return
        self._prune(cluster, (namespace,), lambda: lambda holders: holders - {job_id}, retry=True)

    def sweep(self, cluster: str, live: Callable[[], Collection[str]]) -> None:
        """Drop every user not in ``live()`` (the jobs whose current attempt is on
        ``cluster``) from the cluster's copies; delete copies left without users.

        ``live`` is asked after the copies were listed: a job that added itself to a copy
        before the list was live by then (its record says so before its pod is made),
        and one that adds itself after changes the copy's resourceVersion, so the sweep's
        write fails and the copy is judged again next time, never dropped under a job.
        """
        state = self._cache.snapshot().cluster(cluster)
        if state is None or not state.info.copies.enabled:
            return
        defaults = state.info.pod_defaults
        namespaces = tuple(dict.fromkeys((defaults.namespace, *defaults.allowed_namespaces)))

        def keeper() -> Callable[[frozenset[str]], frozenset[str]]:
            alive = frozenset(live())
            return lambda holders: holders & alive

        self._prune(cluster, namespaces, keeper, retry=False)

    def enabled(self) -> bool:
        """Whether any cluster has a copy policy (else there is nothing to sweep)."""
        return any(c.info.copies.enabled for c in self._cache.snapshot().clusters)

    def _copies_enabled(self, cluster: str) -> bool:
        state = self._cache.snapshot().cluster(cluster)
        return state is not None and state.info.copies.enabled

    def _prune(
        self,
        cluster: str,
        namespaces: tuple[str, ...],
        keeper: Callable[[], Callable[[frozenset[str]], frozenset[str]]],
        *,
        retry: bool,
    ) -> None:
        connection = self._cache.connection(cluster)
        listed = [
            (plural, namespace, found)
            for namespace in namespaces
            for plural in _PLURALS.values()
            for found in connection.list_namespaced(plural, namespace, copies_selector())
        ]
        keep = keeper()
        for plural, namespace, found in listed:
            self._prune_one(connection, plural, namespace, found, keep, cluster, retry=retry)

    def _prune_one(  # noqa: PLR0917 - private
        self,
        connection: Connection,
        plural: str,
        namespace: str,
        found: Mapping[str, Any],
        keep: Callable[[frozenset[str]], frozenset[str]],
        cluster: str,
        *,
        retry: bool,
    ) -> None:
        name = str((found.get("metadata") or {}).get("name"))
        current: Mapping[str, Any] | None = found
        for _ in range(_TRIES):
            if current is None or not is_copy(current):
                return
            holders = users(current)
            remaining = keep(holders)
            if remaining == holders:
                return
            version = (current.get("metadata") or {}).get("resourceVersion")
            try:
                if remaining:
                    connection.replace_object(plural, namespace, with_users(current, remaining))
                else:
                    connection.delete_object(plural, namespace, name, version)
                    metrics.DEPENDENCY_COPIES.labels(
                        cluster=cluster, kind=_KINDS[plural], action="deleted"
                    ).inc()
                    log.info("copy.deleted", cluster=cluster, namespace=namespace, name=name)
                return
            except ApiError as exc:
                if exc.kind is not ErrorKind.CONFLICT:
                    raise
                if not retry:
                    return  # changed since listed: judged again at the next sweep
            current = connection.read_object(plural, namespace, name)
        log.warning("copy.prune_gave_up", cluster=cluster, namespace=namespace, name=name)
