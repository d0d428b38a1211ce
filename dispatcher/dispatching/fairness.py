"""The dispatch cycle's fair share: what tenants hold and when pods end, for the core's plan.

``FairShare.begin`` reads the job table (what every tenant's live jobs hold, and on which
cluster) and, only when a reservation is considered, the cache's managed pods (which node
each runs on, and when its ``activeDeadlineSeconds`` ends it), and returns a ``Turn``: the
core's ``CyclePlan`` (``dispatcher.core.fairshare``) for this cycle's waiting jobs, with the
reservations kept from the last cycle. Every decision is the core's.

I/O: none beyond reading the in-memory job table and cache.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from dispatcher import metrics
from dispatcher.core import Placement, Snapshot, quantity
from dispatcher.core.fairshare import (
    CyclePlan,
    Ending,
    Entry,
    FairShareSettings,
    Ledger,
    QueueView,
    Reservation,
    charge_of,
    gpu_model_for,
)
from dispatcher.core.lifecycle import LIVE, State
from dispatcher.core.routing import Decision
from dispatcher.core.snapshot import is_terminated, pod_requests
from dispatcher.dispatching.jobs import Job
from dispatcher.dispatching.ports import Cache
from dispatcher.dispatching.table import JobTable

__all__ = ["FairShare", "Turn", "fair_tenant"]


def fair_tenant(settings: FairShareSettings, job: Job) -> str:
    """The fair-share tenant ``job`` counts as: its authenticated tenant, else its DAG
    owner, else its ``requirements.queue``; names not configured count as the default."""
    return settings.tenant_of(job.tenant, job.spec.requirements.owner, job.spec.requirements.queue)


def _moment(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _started(pod: dict[str, Any]) -> float | None:
    """When the pod's ``activeDeadlineSeconds`` began counting: ``status.startTime``, else
    (not started yet) its creation, which is earlier: the expected end is then never later
    than the real one, so a backfill decision errs on the safe side."""
    started = _moment((pod.get("status") or {}).get("startTime"))
    if started is not None:
        return started
    return _moment((pod.get("metadata") or {}).get("creationTimestamp"))


def pod_ending(cluster: str, pod: dict[str, Any], now: float) -> Ending | None:
    """When a bound pod is expected to end: its start (or now, not started yet) plus its
    ``activeDeadlineSeconds``; unknown without one. ``None`` for unbound or ended pods."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if not node or is_terminated(pod):
        return None
    deadline = spec.get("activeDeadlineSeconds")
    started = _started(pod)
    end = None
    if isinstance(deadline, int):
        end = (started if started is not None else now) + deadline
    requests = pod_requests(pod)
    requests[quantity.PODS] = requests.get(quantity.PODS, 0) + 1
    return Ending(cluster, str(node), requests, end)


class Turn:
    """One cycle's fair share: the order, the views, admission and reservations."""

    def __init__(self, owner: FairShare, plan: CyclePlan, jobs: dict[str, tuple[Job, Entry]]):
        self._owner = owner
        self.plan = plan
        self._jobs = jobs
        #: Job id -> where each job that waits stands (``queue_view``).
        self.queue: dict[str, QueueView] = {}

    def order(self) -> list[Job]:
        """The waiting jobs in fair-share order."""
        return [self._jobs[e.job_id][0] for e in self.plan.order(e for _, e in self._jobs.values())]

    def _entry(self, job: Job) -> Entry:
        return self._jobs[job.id][1]

    def view_key(self, job: Job) -> str:
        """Part of the decision cache's key: jobs barred from different nodes differ."""
        barred = self.plan.barred(self._entry(job))
        return "|" + ",".join(f"{c}/{n}" for c, n in sorted(barred)) if barred else ""

    def view(self, job: Job) -> Snapshot:
        return self.plan.view(self._entry(job))

    def hold(self, job: Job, decision: Decision) -> str | None:
        """Why a job that fits on ``decision.cluster`` must wait for its quota, or ``None``."""
        entry = self._entry(job)
        admission = self.plan.admit(entry, decision.cluster or "")
        if admission.admitted:
            return None
        held = f"fits on {decision.cluster}, but waits for quota: {admission.message}"
        view = self.plan.queue_view(entry, decision, held=held)
        self.queue[job.id] = view
        return view.message(self.plan.now)

    def placement(self, job: Job, placement: Placement) -> Placement:
        """``placement`` kept off the nodes reserved for others."""
        avoid = self.plan.avoid(self._entry(job), placement.cluster)
        return replace(placement, avoid_nodes=avoid) if avoid else placement

    def placed(self, job: Job, cluster: str, snapshot: Snapshot) -> None:
        self.plan.placed(self._entry(job), cluster)
        self.plan.refresh(snapshot)

    def waiting(self, job: Job, decision: Decision) -> str:
        """The reason to show for a job that waits; reserves a node for it if it may."""
        entry = self._entry(job)
        self.plan.reserve(entry, decision)
        view = self.plan.queue_view(entry, decision)
        self.queue[job.id] = view
        return f"{view.message(self.plan.now)}. {decision.message()}"

    def end(self) -> None:
        self._owner.finish(self)


class FairShare:
    """Builds each cycle's ``Turn``; keeps reservations from one cycle to the next."""

    def __init__(
        self,
        cache: Cache,
        table: JobTable,
        settings: Callable[[], FairShareSettings],
    ) -> None:
        self._cache = cache
        self._table = table
        self._settings = settings
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, str]] = {}
        self._reservations: dict[str, Reservation] = {}
        self._queue: dict[str, QueueView] = {}
        self._queue_at = 0.0

    def ledger(self, settings: FairShareSettings, snapshot: Snapshot) -> Ledger:
        """What each tenant's live jobs hold, on the clusters they run on."""
        ledger = Ledger()
        for job in self._table.select(lambda j: j.state in LIVE and j.attempt is not None):
            cluster = job.cluster or ""
            state = snapshot.cluster(cluster)
            model = gpu_model_for(job.spec, state) if state is not None else None
            ledger.add(fair_tenant(settings, job), cluster, charge_of(job.spec, model))
        return ledger

    def _endings(self, snapshot: Snapshot, now: float) -> list[Ending]:
        endings = []
        for state in snapshot.clusters:
            for pod in self._cache.managed_pods(state.name):
                ending = pod_ending(state.name, pod, now)
                if ending is not None:
                    endings.append(ending)
        return endings

    def begin(self, heads: Iterable[Job], snapshot: Snapshot, now: float) -> Turn:
        settings = self._settings()
        jobs = {
            job.id: (job, Entry(job.id, fair_tenant(settings, job), job.spec, job.submitted_at))
            for job in heads
        }
        with self._lock:
            held = {j: w for j, w in self._held.items() if j in jobs}
        plan = CyclePlan(
            settings,
            snapshot,
            self.ledger(settings, snapshot),
            now=now,
            endings=lambda: self._endings(snapshot, now),
            held=held,
        )
        return Turn(self, plan, jobs)

    def finish(self, turn: Turn) -> None:
        with self._lock:
            self._held = turn.plan.held()
            self._reservations = dict(turn.plan.reservations)
            self._queue = dict(turn.queue)
            self._queue_at = turn.plan.now

    def queue(self, job_id: str) -> dict[str, Any] | None:
        """Where a waiting job stood at the last cycle (``QueueView.to_dict``), if it waited."""
        with self._lock:
            view = self._queue.get(job_id)
            return view.to_dict(self._queue_at) if view is not None else None

    def publish(self, snapshot: Snapshot, now: float) -> None:
        """The per-tenant and per-pool gauges (tenants are the configured ones and the
        default; pools the quota resources and the clusters' GPU models: bounded)."""
        settings = self._settings()
        ledger = self.ledger(settings, snapshot)
        names = settings.names()
        usage: dict[tuple[str, ...], float] = {}
        quota: dict[tuple[str, ...], float] = {}
        borrowed: dict[tuple[str, ...], float] = {}
        for tenant in names:
            for pool, amount in ledger.pools(tenant).items():
                usage[tenant, pool] = amount
            nominal = settings.share(tenant).quota
            for key, limit in (nominal.limits() if nominal is not None else {}).items():
                quota[tenant, key] = limit
                borrowed[tenant, key] = max(ledger.used(tenant, key) - limit, 0)
        waiting = dict.fromkeys(names, 0)
        oldest = dict.fromkeys(names, 0.0)
        for job in self._table.select(lambda j: j.state is State.QUEUED):
            tenant = fair_tenant(settings, job)
            waiting[tenant] = waiting.get(tenant, 0) + 1
            oldest[tenant] = max(oldest.get(tenant, 0.0), now - job.submitted_at)
        metrics.replace_gauge(metrics.TENANT_USAGE, usage)
        metrics.replace_gauge(metrics.TENANT_QUOTA, quota)
        metrics.replace_gauge(metrics.TENANT_BORROWED, borrowed)
        metrics.replace_gauge(metrics.TENANT_WAITING, {(t,): n for t, n in waiting.items()})
        metrics.replace_gauge(metrics.TENANT_OLDEST_WAIT, {(t,): s for t, s in oldest.items()})
        reserved = dict.fromkeys((state.name for state in snapshot.clusters), 0)
        for reservation in self.reservations().values():
            reserved[reservation.cluster] = reserved.get(reservation.cluster, 0) + 1
        metrics.replace_gauge(metrics.RESERVATIONS, {(c,): n for c, n in reserved.items()})

    def observe_wait(self, job: Job, now: float) -> None:
        """A job left the queue for a pod: how long its tenant's job waited."""
        tenant = fair_tenant(self._settings(), job)
        metrics.TENANT_WAIT_SECONDS.labels(tenant=tenant).observe(max(0.0, now - job.submitted_at))

    def reservations(self) -> dict[str, Reservation]:
        """The reservations of the last cycle, by job id."""
        with self._lock:
            return dict(self._reservations)
