"""Informer events, judged against the jobs: pods to their jobs' mailboxes, the rest deleted.

A pod of a job's current attempt is posted to the job's mailbox as an observation. A pod
of any other attempt must not run: it is deleted, and counted in
``OVERLAPPING_ATTEMPTS`` if it was alive while the job's current attempt was pending or
running. A live pod of a finished job (a create answered late, a cancelled job's pod) is
deleted too. When an unreachable cluster answers again, ``sweep`` deletes every pod there
that is not its job's current attempt before anything else, and has each live attempt
there whose pod was not listed read again (it went while nobody watched). ``sweep`` runs
again after every list of the cluster's pods: a health change can come before the list
that follows it, and a watch that expired (410) relists without any health change.

Only an active dispatcher (the leader, after ``reattach`` rebuilt its jobs) judges pods: a
follower's empty job table must not make every pod look like an orphan.

I/O: stale pod deletes through ``PodActions``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from dispatcher import metrics
from dispatcher.core import Health
from dispatcher.core.lifecycle import LIVE, State
from dispatcher.dispatching.jobs import Job
from dispatcher.dispatching.mailbox import RESOLVE, Mail, Mailboxes
from dispatcher.dispatching.pods import PodActions
from dispatcher.dispatching.ports import Cache
from dispatcher.dispatching.table import JobTable
from dispatcher.dispatching.tracking import (
    Reachability,
    alive,
    observation_mail,
    pod_identity,
    same_attempt,
)

log = structlog.get_logger("dispatcher.dispatching")

__all__ = ["PodEvents"]


class PodEvents:
    def __init__(
        self,
        cache: Cache,
        table: JobTable,
        mail: Mailboxes,
        pods: PodActions,
        reach: Reachability,
        *,
        clock: Callable[[], float],
        wake: Callable[[], None],
        stopped: Callable[[], bool],
    ) -> None:
        self._cache = cache
        self._table = table
        self._mail = mail
        self._pods = pods
        self._reach = reach
        self._clock = clock
        self._wake = wake
        self._stopped = stopped
        self._lock = threading.Lock()
        self._overlaps: set[tuple[str, str]] = set()  # (cluster, pod) overlaps counted
        self.active = False

    def on_event(
        self, cluster: str, kind: str, event_type: str, obj: dict[str, Any] | None
    ) -> None:
        """The cache's listener: every kind of event, from the informers' threads."""
        if not self.active or self._stopped():
            return
        if kind == "pod" and obj is not None:
            self.on_pod(cluster, event_type, obj)
        elif kind == "health":
            self._on_health(cluster)
        elif kind == "listed":
            # A pod created and deleted between two lists sends no event: after every
            # list, a live attempt whose pod is not listed is read.
            self.sweep(cluster)
        # Every kind of event (pod, node, capacity, health) may free room: let queued
        # jobs try again.
        self._wake()

    def _on_health(self, cluster: str) -> None:
        if self._cache.health(cluster) is Health.DOWN:
            self._reach.lost(cluster, self._clock())
        elif self._reach.back(cluster):
            # Back: first of all, attempts that are not their job's current one go.
            self.sweep(cluster)

    def on_pod(self, cluster: str, event_type: str, pod: dict[str, Any]) -> None:
        identity = pod_identity(pod)
        if identity is None:
            return
        job = self._table.get(identity.job_id)
        if job is None:
            return  # another dispatcher's, or acknowledged (its pod was deleted first)
        if not same_attempt(job.attempt, identity, cluster):
            if event_type != "DELETED":
                self.stale(job, cluster, pod)
            else:
                with self._lock:
                    self._overlaps.discard((cluster, identity.name))
            return
        if job.state.finished:
            if event_type != "DELETED" and alive(pod):
                # Alive after its job ended (a create answered late, a cancelled job's or a
                # timed-out job's pod): it must not run, whatever on_finish_action keeps.
                self._pods.delete_stale(cluster, identity.namespace, identity.name)
            return
        self._mail.post(job.id, observation_mail(pod, seen_deleted=event_type == "DELETED"))

    def stale(self, job: Job, cluster: str, pod: dict[str, Any]) -> None:
        """A pod of another attempt: the task must not run twice. Counted if it overlapped."""
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name", ""))
        key = (cluster, name)
        if alive(pod) and job.state in (State.RUNNING, State.PENDING):
            with self._lock:
                first = key not in self._overlaps
                self._overlaps.add(key)
            if first:
                metrics.OVERLAPPING_ATTEMPTS.labels(cluster=cluster).inc()
                log.warning("job.overlapping_attempt", job_id=job.id, cluster=cluster, pod=name)
        self._pods.delete_stale(cluster, str(metadata.get("namespace", "")), name)

    def sweep(self, cluster: str) -> None:
        """Every managed pod of ``cluster`` that is not its job's current attempt goes."""
        if not self._cache.synced(cluster):
            return
        pods = self._cache.managed_pods(cluster)
        listed = {(i.job_id, i.attempt) for i in map(pod_identity, pods) if i is not None}
        unseen = self._table.select(
            lambda j: (
                j.state in LIVE
                and j.attempt is not None
                and j.attempt.cluster == cluster
                and (j.id, j.attempt.number) not in listed
            )
        )
        # A pod that went while nobody watched sends no event: read what is there.
        for job in unseen:
            self._mail.post(job.id, Mail(RESOLVE))
        for pod in pods:
            identity = pod_identity(pod)
            if identity is None:
                continue
            owner = self._table.get(identity.job_id)
            if owner is not None and not same_attempt(owner.attempt, identity, cluster):
                self.stale(owner, cluster, pod)
