"""Fair share of scarce resources: tenants' quotas, the queue's order, reservations; pure.

No I/O, no clock (``now`` is an argument), no threads. The dispatch cycle builds a
``CyclePlan`` each turn from the settings (``FairShareSettings``), a snapshot, what every
tenant holds (``Ledger``) and when running pods are expected to end (``Ending``), then asks
it, job by job:

1. **order** (``CyclePlan.order``): strict priority first (higher first); within a
   priority, the tenant with the lowest weighted dominant-resource share goes next
   (``dominant share / weight``, DRF: the share of the pool the tenant uses most of, GPUs of
   each model, CPU and memory being pools), counting what was ordered ahead of it as if
   it ran; then the oldest job; then the job id, so equal inputs give equal orders.
2. **view** (``CyclePlan.view``): the snapshot the job is routed on: nodes reserved for
   other jobs are taken away (marked unschedulable), unless the job may backfill them.
3. **admit** (``CyclePlan.admit``): a job that fits somewhere is charged to its tenant's
   quota there: within its nominal quota (global and per cluster) it goes; over it, it may
   borrow its cohort's idle nominal quota up to its ``borrowing_limit``; otherwise it
   waits, saying which quota holds it. A tenant within its nominal quota is never held by
   a quota check, whatever other tenants hold or borrow.
4. **reserve** (``CyclePlan.reserve``): a job within quota that fits no node now, but
   would on some node once running work drains, gets that node reserved: the node where,
   by the declared ``active_deadline_seconds`` of the pods running there, it will fit
   soonest (nodes with no known drain time last, least missing first). Other jobs may
   use a reserved node only when their own ``active_deadline_seconds`` ends before the
   reservation is expected to be satisfiable (backfill); jobs that declare none never do.
   Jobs of a higher priority are never kept off it (strict priority).
   A reservation is kept on the same node from one cycle to the next (``held``) while
   its job waits, and is in force before anyone of the next cycle is routed, so later
   arrivals of its priority cannot push it back: the node's expected time never grows,
   and the job runs once the pods there at reservation time have ended.

Over-quota jobs neither get reservations nor count ahead of anyone, so they never hold
a tenant within its quota back. See docs/fair-share.md for a worked example.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dispatcher.core import quantity
from dispatcher.core.names import DNSLabel
from dispatcher.core.routing import Decision, Reason, Verdict, feasible_nodes
from dispatcher.core.scheduling import fits
from dispatcher.core.snapshot import (
    ClusterState,
    NodeInfo,
    Snapshot,
    gpu_model_matches,
)
from dispatcher.core.spec import TaskSpec

__all__ = [
    "CPU_POOL",
    "MEMORY_POOL",
    "Admission",
    "CyclePlan",
    "Ending",
    "Entry",
    "FairShareSettings",
    "Ledger",
    "QueueView",
    "Quota",
    "Reservation",
    "TenantShare",
    "charge_of",
    "dominant_share",
    "fit_time",
    "gpu_model_for",
    "gpu_pool",
    "pool_capacity",
]

CPU_POOL = "cpu"
MEMORY_POOL = "memory"
_GPU_PREFIX = "gpu/"

#: Pool -> amount (millicores, bytes, GPUs).
Charge = Mapping[str, int]


def gpu_pool(model: str | None) -> str:
    """The pool of GPUs of ``model`` (the node label's value)."""
    return _GPU_PREFIX + (model or "unknown")


def _pool_model(pool: str) -> str | None:
    return pool[len(_GPU_PREFIX) :] if pool.startswith(_GPU_PREFIX) else None


def _amount(resource: str, value: str | int | float | None) -> int | None:
    if value is None:
        return None
    return quantity.to_amount(resource, value)


class Quota(BaseModel):
    """Amounts per resource: GPUs by model, CPU, memory. A resource not named is not
    limited by this quota."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: GPU model (matched as ``requirements.gpu_model`` is: ``a100`` matches
    #: ``NVIDIA-A100-SXM4-80GB``) -> GPUs.
    gpus: dict[str, int] = Field(default_factory=dict)
    #: A Kubernetes quantity: ``64``, ``500m``.
    cpu: str | int | None = None
    #: A Kubernetes quantity: ``256Gi``.
    memory: str | int | None = None

    @field_validator("gpus")
    @classmethod
    def _counts(cls, value: dict[str, int]) -> dict[str, int]:
        for model, count in value.items():
            if not model.strip():
                raise ValueError("a GPU model name must not be empty")
            if count < 0:
                raise ValueError(f"{model}: must not be negative")
        return value

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            quantity.to_amount(quantity.CPU, value)  # raises ValueError naming the problem
        return value

    def limits(self) -> dict[str, int]:
        """Quota resources -> amount: ``cpu`` (millicores), ``memory`` (bytes),
        ``gpu/<model as written>``."""
        out: dict[str, int] = {f"{_GPU_PREFIX}{m}": n for m, n in sorted(self.gpus.items())}
        cpu = _amount(quantity.CPU, self.cpu)
        memory = _amount(quantity.MEMORY, self.memory)
        if cpu is not None:
            out[CPU_POOL] = cpu
        if memory is not None:
            out[MEMORY_POOL] = memory
        return out


def _covers(key: str, pool: str) -> bool:
    """Whether quota resource ``key`` (``gpu/a100``, ``cpu``) counts ``pool``."""
    model = _pool_model(key)
    if model is None:
        return key == pool
    have = _pool_model(pool)
    return have is not None and gpu_model_matches(model, have)


class TenantShare(BaseModel):
    """One tenant's part: its weight in the fair order, nominal quotas, cohort."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: A tenant of weight 2 is entitled to twice the share of one of weight 1.
    weight: float = Field(default=1.0, gt=0, le=1000, allow_inf_nan=False)
    #: Nominal quota across all clusters; unset: not limited.
    quota: Quota | None = None
    #: Nominal quota per cluster, on top of ``quota``.
    clusters: dict[DNSLabel, Quota] = Field(default_factory=dict)
    #: Tenants of one cohort lend each other their idle nominal quota.
    cohort: DNSLabel | None = None
    #: The most a tenant may use beyond its nominal quota by borrowing, per resource;
    #: unset: as much as the cohort has idle. Without a cohort, nothing is borrowed.
    borrowing_limit: Quota | None = None


class FairShareSettings(BaseModel):
    """The ``fair_share`` settings section (docs/fair-share.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Fair-share tenants by name: the authentication work's tenants, DAG owners, or
    #: ``requirements.queue`` names. Jobs of any other name count as ``default_tenant``.
    tenants: dict[DNSLabel, TenantShare] = Field(default_factory=dict)
    default_tenant: DNSLabel = "default"
    #: Reserve nodes for jobs that fit nowhere now (no starvation of large tasks).
    reservations: bool = True
    #: At most this many nodes reserved at once.
    max_reservations: int = Field(default=4, ge=0, le=256)

    @model_validator(mode="after")
    def _cohort_limits(self) -> Self:
        lonely = sorted(
            name for name, t in self.tenants.items() if t.borrowing_limit and not t.cohort
        )
        if lonely:
            raise ValueError(
                f"tenants {', '.join(lonely)} set borrowing_limit but no cohort to borrow from"
            )
        return self

    def tenant_of(self, *candidates: str | None) -> str:
        """The fair-share tenant of a job: the first candidate given (authenticated
        tenant, DAG owner, ``requirements.queue``), if configured, else the default."""
        for candidate in candidates:
            if candidate:
                return candidate if candidate in self.tenants else self.default_tenant
        return self.default_tenant

    def share(self, tenant: str) -> TenantShare:
        return self.tenants.get(tenant) or TenantShare()

    def names(self) -> tuple[str, ...]:
        """Every tenant a job can count as (configured ones and the default)."""
        return tuple(sorted({*self.tenants, self.default_tenant}))


def gpu_model_for(task: TaskSpec, state: ClusterState) -> str | None:
    """The GPU model ``task``'s GPUs count as on ``state``'s cluster: the model it asks
    for as the nodes name it, else the cluster's only (or first by name) GPU model."""
    if not task.gpus:
        return None
    wanted = task.requirements.gpu_model
    models = sorted(
        {
            s.gpu_model
            for s in state.shapes
            if s.gpu_model and (wanted is None or gpu_model_matches(wanted, s.gpu_model))
        }
    )
    return models[0] if models else wanted


def charge_of(task: TaskSpec, model: str | None) -> dict[str, int]:
    """What ``task`` takes from the pools when its GPUs are of ``model``."""
    requests = task.requests
    charge = {
        CPU_POOL: requests.get(quantity.CPU, 0),
        MEMORY_POOL: requests.get(quantity.MEMORY, 0),
    }
    if task.gpus:
        charge[gpu_pool(model)] = task.gpus
    return {pool: amount for pool, amount in charge.items() if amount}


def pool_capacity(snapshot: Snapshot) -> dict[str, int]:
    """Allocatable per pool over every schedulable node (the DRF denominators)."""
    total: dict[str, int] = {}
    for state in snapshot.clusters:
        for shape in state.shapes:
            if not shape.schedulable:
                continue
            for name, pool in (
                (quantity.CPU, CPU_POOL),
                (quantity.MEMORY, MEMORY_POOL),
                (quantity.GPU, gpu_pool(shape.gpu_model)),
            ):
                amount = shape.capacity.get(name, 0)
                if amount:
                    total[pool] = total.get(pool, 0) + amount
    return total


def dominant_share(usage: Mapping[str, int], capacity: Mapping[str, int]) -> float:
    """The largest share of any pool ``usage`` takes (pools with no capacity ignored)."""
    return max(
        (amount / capacity[pool] for pool, amount in usage.items() if capacity.get(pool)),
        default=0.0,
    )


class Ledger:
    """What each tenant holds, per cluster and pool. A working value of one cycle."""

    def __init__(self) -> None:
        self._held: dict[str, dict[tuple[str, str], int]] = {}

    def add(self, tenant: str, cluster: str, charge: Charge) -> None:
        held = self._held.setdefault(tenant, {})
        for pool, amount in charge.items():
            held[cluster, pool] = held.get((cluster, pool), 0) + amount

    def copy(self) -> Ledger:
        other = Ledger()
        other._held = {t: dict(h) for t, h in self._held.items()}
        return other

    def tenants(self) -> tuple[str, ...]:
        return tuple(sorted(self._held))

    def pools(self, tenant: str, cluster: str | None = None) -> dict[str, int]:
        """What ``tenant`` holds per pool (in ``cluster``, or everywhere)."""
        out: dict[str, int] = {}
        for (where, pool), amount in self._held.get(tenant, {}).items():
            if cluster is None or where == cluster:
                out[pool] = out.get(pool, 0) + amount
        return out

    def used(self, tenant: str, key: str, cluster: str | None = None) -> int:
        """What ``tenant`` holds of quota resource ``key`` (in ``cluster``, or everywhere)."""
        return sum(a for p, a in self.pools(tenant, cluster).items() if _covers(key, p))


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a job may take what it asks for, under its tenant's quotas."""

    admitted: bool
    #: It goes beyond its tenant's nominal quota, on the cohort's idle quota.
    borrowing: bool = False
    #: Why not (a sentence naming the setting), or what is borrowed.
    message: str = ""


def _describe(key: str, amount: int) -> str:
    model = _pool_model(key)
    if model is not None:
        return f"{amount} {model} GPU" + ("" if amount == 1 else "s")
    return quantity.describe_amount(quantity.CPU if key == CPU_POOL else quantity.MEMORY, amount)


def admit(
    settings: FairShareSettings, ledger: Ledger, tenant: str, cluster: str, charge: Charge
) -> Admission:
    """Whether ``tenant`` may take ``charge`` on ``cluster`` (see the module's step 3)."""
    share = settings.share(tenant)
    scopes: list[tuple[Quota, str | None, str]] = []
    if share.quota is not None:
        scopes.append((share.quota, None, f"fair_share.tenants.{tenant}.quota"))
    if cluster in share.clusters:
        scopes.append(
            (share.clusters[cluster], cluster, f"fair_share.tenants.{tenant}.clusters.{cluster}")
        )
    borrowed: list[str] = []
    for quota, scope, setting in scopes:
        for key, nominal in quota.limits().items():
            need = sum(a for p, a in charge.items() if _covers(key, p))
            if not need:
                continue
            used = ledger.used(tenant, key, scope)
            if used + need <= nominal:
                continue
            where = f" in {scope}" if scope else ""
            if share.cohort is None:
                return Admission(
                    False,
                    message=f"tenant {tenant!r} would hold {_describe(key, used + need)}{where}, "
                    f"over its quota of {_describe(key, nominal)} ({setting})",
                )
            over = used + need - nominal
            limit = (share.borrowing_limit.limits() if share.borrowing_limit else {}).get(key)
            if limit is not None and over > limit:
                return Admission(
                    False,
                    message=f"tenant {tenant!r} would borrow {_describe(key, over)}{where}, "
                    f"over its borrowing limit of {_describe(key, limit)} "
                    f"(fair_share.tenants.{tenant}.borrowing_limit)",
                )
            members = [n for n, t in settings.tenants.items() if t.cohort == share.cohort]
            lendable = used_by_cohort = 0
            for member in members:
                theirs = settings.share(member)
                their_quota = theirs.quota if scope is None else theirs.clusters.get(scope)
                lendable += (their_quota.limits() if their_quota else {}).get(key, 0)
                used_by_cohort += ledger.used(member, key, scope)
            if used_by_cohort + need > lendable:
                idle = max(lendable - used_by_cohort, 0)
                return Admission(
                    False,
                    message=f"tenant {tenant!r} is at its quota of {_describe(key, nominal)}"
                    f"{where} ({setting}) and cohort {share.cohort!r} has only "
                    f"{_describe(key, idle)} idle",
                )
            borrowed.append(f"{_describe(key, over)}{where} from cohort {share.cohort!r}")
    if borrowed:
        return Admission(True, borrowing=True, message="borrowing " + ", ".join(borrowed))
    return Admission(True)


@dataclass(frozen=True, slots=True)
class Entry:
    """A waiting job, as the plan sees it."""

    job_id: str
    tenant: str
    task: TaskSpec
    submitted_at: float

    @property
    def priority(self) -> int:
        return self.task.requirements.priority


@dataclass(frozen=True, slots=True)
class Ending:
    """A pod on a node, and when it is expected to end (``None``: unknown)."""

    cluster: str
    node: str
    requests: Mapping[str, int]
    end: float | None


def fit_time(
    node: NodeInfo, requests: Mapping[str, int], endings: Iterable[Ending], now: float
) -> float | None:
    """When ``requests`` will fit on ``node``, as the pods with known ends end there;
    ``None`` when their ends do not free enough (or are unknown)."""
    wanted = tuple(requests.items())
    free = node.free
    if fits(wanted, free):
        return now
    for ending in sorted(
        (e for e in endings if e.end is not None), key=lambda e: (e.end or 0.0, e.node)
    ):
        quantity.add_requests(free, ending.requests)
        if fits(wanted, free):
            return max(ending.end or now, now)
    return None


def _shortfall(node: NodeInfo, requests: Mapping[str, int]) -> float:
    """How much of what ``requests`` asks is missing on ``node`` now (sum of shares)."""
    free = node.free
    return sum(
        max(amount - free.get(name, 0), 0) / node.allocatable[name]
        for name, amount in requests.items()
        if node.allocatable.get(name)
    )


@dataclass(frozen=True, slots=True)
class Reservation:
    """A node kept for a job until it fits there."""

    job_id: str
    cluster: str
    node: str
    #: When the job is expected to fit there (``None``: unknown; no backfill then).
    eta: float | None
    #: What the job needs on one node, for readers.
    requests: Mapping[str, int] = field(default_factory=dict, compare=False)
    #: Its job's priority: a job of a higher priority is not kept off the node.
    priority: int = 0

    def describe(self, now: float) -> str:
        if self.eta is None:
            when = "when the running work there ends (no declared deadlines)"
        elif self.eta <= now:
            when = "expected to fit now"
        else:
            when = f"expected to fit by {datetime.fromtimestamp(self.eta, UTC):%H:%M:%S} UTC"
        return f"node {self.node} on {self.cluster} is reserved for it, {when}"

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "node": self.node, "eta": self.eta}


def may_backfill(task: TaskSpec, reservation: Reservation, now: float) -> bool:
    """Whether ``task`` may use ``reservation``'s node without delaying it: it declares
    ``active_deadline_seconds`` and ends by then before the reservation's time."""
    deadline = task.active_deadline_seconds
    eta = reservation.eta
    return deadline is not None and eta is not None and now + deadline <= eta


def _masked(state: ClusterState, nodes: frozenset[str]) -> ClusterState:
    """``state`` with ``nodes`` cordoned (routing then passes them by)."""
    infos = [
        dataclasses.replace(n, unschedulable=True) if n.name in nodes else n
        for shape in state.shapes
        for n in shape.nodes
    ]
    return ClusterState.build(
        state.info,
        health=state.health,
        nodes=infos,
        queue_depth=state.queue_depth,
        refusal=state.refusal,
        objects=state.objects,
    )


def _wanted_pool(task: TaskSpec) -> str:
    """The pool a waiting job is counted in: GPUs (of the model it asks for), else CPU."""
    if task.gpus:
        return _GPU_PREFIX + (task.requirements.gpu_model or "any")
    return CPU_POOL


def _largest_free(task: TaskSpec, snapshot: Snapshot, decision: Decision) -> int:
    """The most of the job's scarcest resource free on one node that could run it, over
    the clusters that could run it later."""
    name = quantity.GPU if task.gpus else quantity.CPU
    could = {v.cluster for v in decision.clusters if v.verdict is not Verdict.REJECT}
    return max(
        (
            max(node.free.get(name, 0), 0)
            for state in snapshot.clusters
            if state.name in could
            for node in feasible_nodes(task, state)
        ),
        default=0,
    )


def _waiting_for(task: TaskSpec, snapshot: Snapshot, decision: Decision) -> str:
    """``16 a100 GPUs on one node; largest free block 6``."""
    largest = _largest_free(task, snapshot, decision)
    if task.gpus:
        model = task.requirements.gpu_model
        noun = "GPU" if task.gpus == 1 else "GPUs"
        what = f"{task.gpus} {model + ' ' if model else ''}{noun}"
        return f"{what} on one node; largest free block {largest}"
    cpu = task.requests.get(quantity.CPU, 0)
    return (
        f"{quantity.describe_amount(quantity.CPU, cpu)} on one node; largest free block "
        f"{quantity.describe_amount(quantity.CPU, largest)}"
    )


@dataclass(frozen=True, slots=True)
class QueueView:
    """Where a waiting job stands, for people: ``dispatcher queue``, the API, task logs."""

    #: Jobs ahead of it in the order, overall.
    ahead: int
    ahead_in_tenant: int
    #: The resource pool it waits in (``gpu/a100``, ``gpu/any``, ``cpu``) and jobs ahead there.
    pool: str
    ahead_in_pool: int
    tenant: str
    #: What it waits for, or the quota that holds it.
    waiting_for: str
    reservation: Reservation | None = None
    #: When it is expected to start (known when its reserved node drains by deadlines).
    expected_start: float | None = None

    def message(self, now: float) -> str:
        """``16 a100 GPUs on one node; largest free block 6; 2 tasks ahead in your tenant,
        5 overall``."""
        parts = [
            self.waiting_for,
            f"{_tasks(self.ahead_in_tenant)} ahead in your tenant ({self.tenant}), "
            f"{self.ahead} overall, {self.ahead_in_pool} in pool {self.pool}",
        ]
        if self.reservation is not None:
            parts.append(self.reservation.describe(now))
        return "; ".join(parts)

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "ahead": self.ahead,
            "ahead_in_tenant": self.ahead_in_tenant,
            "tenant": self.tenant,
            "pool": self.pool,
            "ahead_in_pool": self.ahead_in_pool,
            "waiting_for": self.waiting_for,
            "reservation": self.reservation.to_dict() if self.reservation else None,
            "expected_start": self.expected_start,
            "message": self.message(now),
        }


def _tasks(count: int) -> str:
    return "1 task" if count == 1 else f"{count} tasks"


class CyclePlan:
    """One cycle's fair-share decisions (the module docstring's steps). Pure: it only
    computes on what it is given; the cycle does the placing."""

    def __init__(
        self,
        settings: FairShareSettings,
        snapshot: Snapshot,
        ledger: Ledger,
        *,
        now: float,
        endings: Sequence[Ending] | Callable[[], Sequence[Ending]] = (),
        held: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.now = now
        self._ledger = ledger
        # A callable is asked only when a reservation is first considered.
        self._endings_source = endings
        self._endings_by_node: dict[tuple[str, str], list[Ending]] | None = None
        #: Job id -> (cluster, node) reserved for it in the last cycle.
        self._held = dict(held or {})
        self.reservations: dict[str, Reservation] = {}
        #: Job id -> (ahead overall, ahead in its tenant, pool, ahead in that pool).
        self.positions: dict[str, tuple[int, int, str, int]] = {}
        self._views: dict[frozenset[tuple[str, str]], Snapshot] = {}
        self.refresh(snapshot)

    def _endings(self) -> dict[tuple[str, str], list[Ending]]:
        if self._endings_by_node is None:
            source = self._endings_source
            endings = source() if callable(source) else source
            self._endings_by_node = {}
            for ending in endings:
                self._endings_by_node.setdefault((ending.cluster, ending.node), []).append(ending)
        return self._endings_by_node

    def refresh(self, snapshot: Snapshot) -> None:
        """After a placement: the next decisions see the new snapshot."""
        self._snapshot = snapshot
        self._views.clear()
        self._words: dict[int, tuple[Decision, str]] = {}

    # ----- 1. order ---------------------------------------------------------------------
    def order(self, entries: Iterable[Entry]) -> list[Entry]:
        """Strict priority, then lowest weighted dominant share (as if what is ordered
        ahead ran), then age, then id."""
        capacity = pool_capacity(self._snapshot)
        virtual = {t: self._ledger.pools(t) for t in self._ledger.tenants()}
        by_priority: dict[int, dict[str, list[Entry]]] = {}
        for entry in entries:
            by_priority.setdefault(entry.priority, {}).setdefault(entry.tenant, []).append(entry)
        ordered: list[Entry] = []
        for priority in sorted(by_priority, reverse=True):
            queues = by_priority[priority]
            for queue in queues.values():
                queue.sort(key=lambda e: (e.submitted_at, e.job_id), reverse=True)
            heap = [self._key(t, q[-1], virtual, capacity) for t, q in queues.items()]
            heapq.heapify(heap)
            while heap:
                *_, tenant = heapq.heappop(heap)
                queue = queues[tenant]
                entry = queue.pop()
                ordered.append(entry)
                held = virtual.setdefault(tenant, {})
                model = self._model_estimate(entry.task)
                quantity.add_requests(held, charge_of(entry.task, model))
                if queue:
                    heapq.heappush(heap, self._key(tenant, queue[-1], virtual, capacity))
        self._restore(ordered)
        self._positions(ordered)
        return ordered

    def _waiting_for(self, task: TaskSpec, decision: Decision) -> str:
        # Jobs of one routing shape share their decision: the words are computed once
        # per decision (and snapshot), not once per job. The decision is kept with its
        # words so that its id cannot be reused meanwhile.
        cached = self._words.get(id(decision))
        if cached is None or cached[0] is not decision:
            cached = (decision, _waiting_for(task, self._snapshot, decision))
            self._words[id(decision)] = cached
        return cached[1]

    def _positions(self, ordered: Sequence[Entry]) -> None:
        """Each job's place in the order: overall, in its tenant, in its resource pool."""
        tenants: dict[str, int] = {}
        pools: dict[str, int] = {}
        self.positions = {}
        for index, entry in enumerate(ordered):
            pool = _wanted_pool(entry.task)
            self.positions[entry.job_id] = (
                index,
                tenants.get(entry.tenant, 0),
                pool,
                pools.get(pool, 0),
            )
            tenants[entry.tenant] = tenants.get(entry.tenant, 0) + 1
            pools[pool] = pools.get(pool, 0) + 1

    def queue_view(self, entry: Entry, decision: Decision, held: str | None = None) -> QueueView:
        """What ``entry`` waits for and where it stands (``held``: its quota's words)."""
        ahead, in_tenant, pool, in_pool = self.positions.get(entry.job_id, (0, 0, "", 0))
        reservation = self.reservations.get(entry.job_id)
        return QueueView(
            ahead=ahead,
            ahead_in_tenant=in_tenant,
            pool=pool,
            ahead_in_pool=in_pool,
            tenant=entry.tenant,
            waiting_for=held or self._waiting_for(entry.task, decision),
            reservation=reservation,
            expected_start=reservation.eta if reservation is not None else None,
        )

    def _restore(self, entries: Sequence[Entry]) -> None:
        """Put last cycle's reservations in force before anyone is routed: a job ahead in
        this cycle's order must not take the node either (else its time slips)."""
        if not self.settings.reservations:
            return
        for entry in entries:
            where = self._held.get(entry.job_id)
            state = self._snapshot.cluster(where[0]) if where else None
            if where is None or state is None or not state.health.routable:
                continue
            node = next((n for n in feasible_nodes(entry.task, state) if n.name == where[1]), None)
            if node is None or not self.admit(entry, state.name).admitted:
                continue
            eta = fit_time(node, entry.task.requests, self._endings().get(where, ()), self.now)
            self.reservations[entry.job_id] = Reservation(
                entry.job_id, *where, eta, dict(entry.task.requests), entry.priority
            )
        self._views.clear()

    def _key(
        self,
        tenant: str,
        head: Entry,
        virtual: Mapping[str, Mapping[str, int]],
        capacity: Mapping[str, int],
    ) -> tuple[float, float, str, str]:
        share = dominant_share(virtual.get(tenant, {}), capacity)
        return (share / self.settings.share(tenant).weight, head.submitted_at, head.job_id, tenant)

    def _model_estimate(self, task: TaskSpec) -> str | None:
        for state in self._snapshot.clusters:
            model = gpu_model_for(task, state)
            if model is not None and any(s.gpu_model == model for s in state.shapes):
                return model
        return task.requirements.gpu_model

    # ----- 2. view ----------------------------------------------------------------------
    def barred(self, entry: Entry) -> frozenset[tuple[str, str]]:
        """The reserved (cluster, node)s ``entry`` may not use: those of other jobs of its
        priority or higher (strict priority: a higher class is never kept waiting by a
        lower one's reservation), unless it backfills them."""
        return frozenset(
            (r.cluster, r.node)
            for r in self.reservations.values()
            if r.job_id != entry.job_id
            and r.priority >= entry.priority
            and not may_backfill(entry.task, r, self.now)
        )

    def view(self, entry: Entry) -> Snapshot:
        """The snapshot to route ``entry`` on: reserved nodes it may not use cordoned."""
        barred = self.barred(entry)
        if not barred:
            return self._snapshot
        found = self._views.get(barred)
        if found is None:
            clusters = {c for c, _ in barred}
            found = Snapshot.of(
                _masked(s, frozenset(n for c, n in barred if c == s.name))
                if s.name in clusters
                else s
                for s in self._snapshot.clusters
            )
            self._views[barred] = found
        return found

    def avoid(self, entry: Entry, cluster: str) -> tuple[str, ...]:
        """Nodes of ``cluster`` the pod of ``entry`` must stay off (``Placement.avoid_nodes``)."""
        return tuple(sorted(n for c, n in self.barred(entry) if c == cluster))

    # ----- 3. admit ---------------------------------------------------------------------
    def charge(self, entry: Entry, cluster: str) -> dict[str, int]:
        state = self._snapshot.cluster(cluster)
        model = gpu_model_for(entry.task, state) if state is not None else None
        return charge_of(entry.task, model)

    def admit(self, entry: Entry, cluster: str) -> Admission:
        """Whether ``entry`` may run on ``cluster`` under its tenant's quotas."""
        charge = self.charge(entry, cluster)
        return admit(self.settings, self._ledger, entry.tenant, cluster, charge)

    def placed(self, entry: Entry, cluster: str) -> None:
        """``entry`` was placed on ``cluster``: its tenant holds it from now."""
        self._ledger.add(entry.tenant, cluster, self.charge(entry, cluster))
        self._held.pop(entry.job_id, None)
        self.reservations.pop(entry.job_id, None)

    # ----- 4. reserve -------------------------------------------------------------------
    def reserve(self, entry: Entry, decision: Decision) -> Reservation | None:
        """A node for ``entry``, which waits (``decision``), if it is within quota on a
        cluster that could run it once work drains; ``None`` otherwise."""
        if not self.settings.reservations or decision.verdict is not Verdict.WAIT:
            return None
        existing = self.reservations.get(entry.job_id)
        if existing is not None:
            return existing
        taken = {(r.cluster, r.node) for r in self.reservations.values()}
        taken |= {where for job, where in self._held.items() if job != entry.job_id}
        # Last cycle's holders still waiting keep their places within the limit.
        pending = {j for j in self._held if j not in self.reservations and j != entry.job_id}
        if len(self.reservations) + len(pending) >= self.settings.max_reservations:
            return None
        requests = dict(entry.task.requests)
        held = self._held.get(entry.job_id)
        best: tuple[tuple[Any, ...], Reservation] | None = None
        for verdict in decision.clusters:
            if verdict.verdict is not Verdict.WAIT or verdict.reason not in _DRAINABLE:
                continue
            state = self._snapshot.cluster(verdict.cluster)
            if state is None or not state.health.routable:
                continue
            if not self.admit(entry, state.name).admitted:
                continue
            for node in feasible_nodes(entry.task, state):
                where = (state.name, node.name)
                if where in taken:
                    continue
                eta = fit_time(node, requests, self._endings().get(where, ()), self.now)
                key = (
                    where != held,  # keep last cycle's node: its time only gets closer
                    eta is None,
                    eta if eta is not None else math.inf,
                    _shortfall(node, requests),
                    where,
                )
                if best is None or key < best[0]:
                    reservation = Reservation(entry.job_id, *where, eta, requests, entry.priority)
                    best = (key, reservation)
        if best is None:
            return None
        self.reservations[entry.job_id] = best[1]
        self._views.clear()
        return best[1]

    def forget_others(self, waiting: Iterable[str]) -> None:
        """Drop last cycle's reservations of jobs that no longer wait."""
        still = set(waiting)
        self._held = {job: where for job, where in self._held.items() if job in still}

    def held(self) -> dict[str, tuple[str, str]]:
        """What to pass as ``held`` next cycle."""
        return {job: (r.cluster, r.node) for job, r in self.reservations.items()}


#: Wait reasons that running work draining can end.
_DRAINABLE = frozenset({Reason.INSUFFICIENT_FREE})
