"""What the console's pages show, as plain values built from the dispatcher and the cache.

Pages never read the dispatcher themselves: each page's data comes from a function here
(``job_rows``, ``job_detail``, ``cluster_rows``) or from the ``QueueSource``, the seam
through which the queue page (and the clusters page's queue per pool) learn what waits for
what. ``RoutingQueue`` is today's source: the dispatcher's queued jobs in the order the
dispatch cycle takes them (priority, then age), each with its routing explained on the
current snapshot. A fair-share queue can replace it without touching the pages.

I/O: none of its own; it reads the dispatcher's in-memory jobs and the cache's snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from dispatcher.core import ClusterState, Snapshot, TaskSpec, Verdict
from dispatcher.core.routing import Decision
from dispatcher.dispatching import Dispatcher
from dispatcher.errors import DispatcherError, InputError, Problem

__all__ = [
    "CPU_POOL",
    "ClusterRow",
    "JobFilter",
    "QueueEntry",
    "QueueSource",
    "RoutingQueue",
    "Waiting",
    "cluster_rows",
    "dag_of",
    "explanation",
    "job_filter",
    "when",
]

#: The pool of tasks that ask for no GPU.
CPU_POOL = "cpu"

#: The job states a filter may name (the API's, in lifecycle order).
STATES = (
    "queued",
    "launching",
    "pending",
    "running",
    "cancelling",
    "moving",
    "succeeded",
    "failed",
    "cancelled",
    "rejected",
)

Visible = Callable[[str | None], bool]


def when(timestamp: float | None) -> str:
    """A Unix time as UTC ISO 8601 to the second ('' when unknown)."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def dag_of(spec: TaskSpec) -> str | None:
    """The Airflow DAG a task belongs to: the ``dag_id`` label the operators set, else the
    DAG part of their idempotency key (``airflow/<dag_id>/<task_id>/...``)."""
    label = spec.labels.get("dag_id")
    if label:
        return label
    key = spec.idempotency_key or ""
    parts = key.split("/")
    if len(parts) > 2 and parts[0] == "airflow" and parts[1] != "sha256":
        return parts[1]
    return None


def pool_of(spec: TaskSpec) -> str:
    """The pool a task queues in: the GPU model it asks for, any GPU, or CPU only."""
    if not spec.gpus:
        return CPU_POOL
    model = spec.requirements.gpu_model
    return f"gpu:{model}" if model else "gpu:any"


@dataclass(frozen=True, slots=True)
class JobFilter:
    """The jobs list's filters; ``None`` matches anything."""

    state: str | None = None
    cluster: str | None = None
    tenant: str | None = None
    dag: str | None = None

    def matches(self, job: Mapping[str, Any], dag: str | None) -> bool:
        return (
            (self.state is None or job["state"] == self.state)
            and (self.cluster is None or job.get("cluster") == self.cluster)
            and (self.tenant is None or job.get("tenant") == self.tenant)
            and (self.dag is None or dag == self.dag)
        )

    def query(self) -> dict[str, str]:
        """The filters as query parameters (the live-update stream takes the same)."""
        return {
            name: value
            for name, value in (
                ("state", self.state),
                ("cluster", self.cluster),
                ("tenant", self.tenant),
                ("dag", self.dag),
            )
            if value
        }


def job_filter(
    state: str | None, cluster: str | None, tenant: str | None, dag: str | None
) -> JobFilter:
    """Filters from query parameters; ``InputError`` names each one at fault."""
    problems = []
    if state and state not in STATES:
        problems.append(("state", f"must be one of {', '.join(STATES)}"))
    for name, value in (("cluster", cluster), ("tenant", tenant), ("dag", dag)):
        if value and len(value) > 253:
            problems.append((name, "must be at most 253 characters"))
    if problems:
        raise InputError([Problem(field, message) for field, message in problems])
    return JobFilter(state or None, cluster or None, tenant or None, dag or None)


def explanation(decision: Decision) -> dict[str, Any]:
    """A routing decision as the job page shows it: the verdict, the chosen cluster, and
    why each cluster was or was not chosen."""
    return {
        "verdict": decision.verdict.value,
        "cluster": decision.cluster,
        "message": decision.message(),
        "clusters": [
            {
                "cluster": c.cluster,
                "verdict": c.verdict.value,
                "reason": c.reason.value,
                "message": c.message,
                "chosen": c.cluster == decision.cluster,
            }
            for c in decision.clusters
        ],
        "notes": list(decision.notes),
    }


def explain_job(dispatcher: Dispatcher, job: Mapping[str, Any]) -> dict[str, Any]:
    """The job's routing explained on the current snapshot, or why it cannot be."""
    try:
        spec = dispatcher.spec(job["id"])
        return explanation(dispatcher.explain(spec, job.get("tenant")))
    except DispatcherError as exc:
        return {"verdict": "", "cluster": None, "message": str(exc), "clusters": [], "notes": []}


# ---------------------------------------------------------------------------- the queue


@dataclass(frozen=True, slots=True)
class Waiting:
    """One cluster a queued job waits for, and for what."""

    cluster: str
    message: str


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A waiting job: its place in the queue and what it waits for."""

    position: int
    job_id: str
    name: str | None
    tenant: str | None
    priority: int
    submitted_at: float
    pool: str
    #: The decision in one paragraph ("no cluster can run the task now; waiting for ...").
    summary: str
    waits_for: tuple[Waiting, ...] = ()
    #: Extra columns a source may add (a fair-share queue's share, its rank...).
    details: Mapping[str, str] = field(default_factory=dict)


class QueueSource(Protocol):
    """Where the queue page's entries come from (the seam a fair-share queue plugs into)."""

    def entries(self, visible: Visible, limit: int) -> list[QueueEntry]:
        """The waiting jobs ``visible(tenant)`` admits, in the order they will be tried."""
        ...


class RoutingQueue:
    """The dispatcher's queued jobs in the order the dispatch cycle takes them (the fair
    share's, from each job's ``queue`` view), with what fair share says each waits for;
    each is routed again on the current snapshot to say which cluster it waits for."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def entries(self, visible: Visible, limit: int) -> list[QueueEntry]:
        queued = self._dispatcher.list(state="queued", limit=100_000, visible=visible)
        # The fair-share order of the last cycle (the job's ``queue`` view: jobs ahead of
        # it) where there is one; jobs it has not ranked yet after, by priority then age.
        queued.sort(key=_queue_order)
        entries = []
        for position, job in enumerate(queued[:limit], start=1):
            try:
                spec = self._dispatcher.spec(job["id"])
                decision = self._dispatcher.explain(spec, job.get("tenant"))
            except DispatcherError:
                continue  # acknowledged or gone meanwhile
            entries.append(
                QueueEntry(
                    position=position,
                    job_id=job["id"],
                    name=job.get("name"),
                    tenant=job.get("tenant"),
                    priority=job["priority"],
                    submitted_at=job["submitted_at"],
                    pool=pool_of(spec),
                    summary=decision.message(),
                    details=_fair_share_details(job.get("queue")),
                    waits_for=tuple(
                        Waiting(c.cluster, c.message)
                        for c in decision.clusters
                        if c.verdict is Verdict.WAIT
                    ),
                )
            )
        return entries


def _queue_order(job: Mapping[str, Any]) -> tuple[int, int, int, float, str]:
    ahead = (job.get("queue") or {}).get("ahead")
    ranked = isinstance(ahead, int)
    return (
        0 if ranked else 1,
        ahead if isinstance(ahead, int) else 0,
        -int(job["priority"]),
        float(job["submitted_at"]),
        str(job["id"]),
    )


def _fair_share_details(queue: Mapping[str, Any] | None) -> dict[str, str]:
    """The fair-share columns of a waiting job (``dispatcher.core.fairshare.QueueView``);
    the same columns for every row, so the table stays rectangular."""
    queue = queue or {}
    ahead = queue.get("ahead_in_tenant")
    return {
        "Fair share": str(queue.get("waiting_for") or ""),
        "Ahead in tenant": "" if ahead is None else str(ahead),
        "Expected start": _clock_time(queue.get("expected_start")),
    }


def _clock_time(moment: Any) -> str:
    if not isinstance(moment, int | float):
        return ""
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S UTC")


# ---------------------------------------------------------------------------- clusters


@dataclass(frozen=True, slots=True)
class GpuRow:
    model: str
    free: int
    total: int


@dataclass(frozen=True, slots=True)
class ClusterRow:
    name: str
    role: str
    health: str
    #: Why it is not up ('' when it is).
    why: str
    nodes: int
    gpus: tuple[GpuRow, ...]
    #: Unix time its credential expires (``None``: not known, or it does not expire).
    credential_expiry: float | None
    #: Waiting jobs that wait for this cluster, by pool.
    queue: Mapping[str, int]
    labels: Mapping[str, str]

    def expires_in(self, now: float) -> str:
        if self.credential_expiry is None:
            return ""
        left = int(self.credential_expiry - now)
        if left <= 0:
            return "expired"
        hours, rest = divmod(left, 3600)
        return f"in {hours} h {rest // 60} min" if hours else f"in {rest // 60} min {rest % 60} s"


def queue_per_pool(entries: Iterable[QueueEntry]) -> dict[str, dict[str, int]]:
    """Cluster -> pool -> how many waiting jobs wait for that cluster in that pool."""
    counts: dict[str, dict[str, int]] = {}
    for entry in entries:
        for waiting in entry.waits_for:
            pools = counts.setdefault(waiting.cluster, {})
            pools[entry.pool] = pools.get(entry.pool, 0) + 1
    return counts


def cluster_rows(
    snapshot: Snapshot,
    status: Callable[[str], tuple[str, str]],
    expiry: Callable[[str], float | None],
    queue: Mapping[str, Mapping[str, int]],
) -> list[ClusterRow]:
    """Every cluster with its health and why (``status(name)`` -> (health, message)),
    its credential's expiry, GPUs by model and its queue per pool."""
    rows = []
    for state in snapshot.clusters:
        health, why = status(state.name)
        rows.append(_cluster_row(state, health, why, expiry(state.name), queue))
    return rows


def _cluster_row(
    state: ClusterState,
    health: str,
    why: str,
    expiry: float | None,
    queue: Mapping[str, Mapping[str, int]],
) -> ClusterRow:
    capacity = state.capacity()
    if state.refusal is not None and not why:
        why = str(state.refusal)
    return ClusterRow(
        name=state.name,
        role=state.info.role.value,
        health=health,
        why=why,
        nodes=state.node_count,
        gpus=tuple(GpuRow(m, free, total) for m, (total, free) in capacity.gpus.items()),
        credential_expiry=expiry,
        queue=dict(sorted(queue.get(state.name, {}).items())),
        labels=dict(state.info.labels),
    )


def now() -> float:
    """The wall clock, for 'expires in' (the only clock the console reads)."""
    return time.time()
