"""The dispatch cycle's routing turn: queued jobs, by priority then age, to placements.

Queued jobs are grouped by routing shape (``queue.RoutingQueue``, kept from the job
table's changes). Each turn:

1. take in the job changes since the last turn; if neither they nor the snapshot changed,
   and no job was passed over last turn (mail in flight), no answer can have changed:
   the turn ends there;
2. the head of each shape (its first job with nothing in its mailbox, i.e. settled) goes
   into a heap ranked by ``order`` (priority then age by default);
3. the best head is routed on the current snapshot. PLACE: the pod is assumed in the
   cache at once (the next decision sees the room taken), ``PLACED`` is posted to the
   job's mailbox (which writes the attempt ahead, then creates the pod), and the shape's
   next job takes its place in the heap. WAIT: the whole shape waits this turn (a
   placement only takes room, so it cannot make a waiting shape fit), its jobs get the
   reason. REJECT: the job is rejected and the next one of the shape is looked at;
4. until the heap is empty.

A shape that waited is not routed again until some cluster's ``generation`` or health
moved (room freed, nodes, dependencies changed): placements and pods bound where they
were assumed only take room. A turn costs O(shapes + placed) heap steps and at most as
many decisions, whatever the queue's length.

I/O: the cache's snapshot and assumed pods.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dispatcher import metrics
from dispatcher.core import Placement, RoutingPolicy, Snapshot, Verdict, build_pod, route
from dispatcher.core.lifecycle import Event, State
from dispatcher.core.routing import Decision
from dispatcher.core.tenancy import ClusterAllowance
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.dispatching.mailbox import Mail, Mailboxes
from dispatcher.dispatching.ports import Cache
from dispatcher.dispatching.queue import RoutingQueue, ShapeGroup, queue_key
from dispatcher.dispatching.table import JobTable

__all__ = ["Order", "Router"]

#: Ranks the heads of the shapes' queues (``queue.queue_key`` by default: priority, then
#: age): the queue order across shapes. It is evaluated when a head enters the heap and
#: again when it comes out, so it may depend on what the turn placed so far, provided a
#: head's key only grows as the turn goes on (as a tenant's fair-share usage does).
#: Within a shape (one tenant, one priority) jobs keep their age order.
Order = Callable[[Job], Any]

_ROUTING_FIELDS = frozenset(
    {
        "container_resources",
        "node_selector",
        "tolerations",
        "affinity",
        "requirements",
        "namespace",
        "priority_class_name",
        # Init containers count in the pod's requests, as the scheduler counts them.
        "init_containers",
    }
)


def routing_shape(job: Job) -> str:
    """What routing looks at, as a key: jobs with the same key get the same decision."""
    # The tenant too: tenants' cluster allow-lists differ.
    return (
        f"{job.tenant or ''}|"
        + ",".join(sorted(job.excluded))
        + job.spec.model_dump_json(include=set(_ROUTING_FIELDS))
    )


class Router:
    def __init__(
        self,
        cache: Cache,
        table: JobTable,
        mail: Mailboxes,
        policy: RoutingPolicy,
        allowance: Callable[[str | None], ClusterAllowance | None] = lambda _: None,
        *,
        order: Order = queue_key,
    ) -> None:
        self._cache = cache
        self._table = table
        self._mail = mail
        self._policy = policy
        #: The clusters a tenant's jobs may use: routing never places a job elsewhere.
        self._allowance = allowance
        self._order = order
        self._queue = RoutingQueue(table, routing_shape)
        #: The snapshot the last turn ended on, and whether it passed over a job whose
        #: mail was in flight (a turn that would see the same may then be skipped).
        self._routed_on: Snapshot | None = None
        self._passed_over = False
        #: Shape -> the WAIT it got and the clusters' (generation, health) then: while
        #: those stay, nothing that could let it run has happened, so it still waits.
        self._waits: dict[str, tuple[tuple[Any, ...], Decision]] = {}
        self._generations: tuple[Snapshot, tuple[Any, ...]] | None = None

    @property
    def queue(self) -> RoutingQueue:
        return self._queue

    def route(self, job: Job, snapshot: Snapshot) -> Decision:
        """The decision for ``job`` (counted in the routing metrics)."""
        started = time.perf_counter()
        allowance = self._allowance(job.tenant)
        decision = route(job.spec, snapshot, self._policy, allowance)
        if job.excluded and decision.cluster in job.excluded:
            # A job that moved away prefers any other cluster; if none can take it now,
            # it may go back (``max_attempts`` stops ping-pong), else it waits.
            others = Snapshot.of(c for c in snapshot.clusters if c.name not in job.excluded)
            elsewhere = route(job.spec, others, self._policy, allowance)
            if elsewhere.verdict is Verdict.PLACE:
                decision = elsewhere
        metrics.ROUTING_SECONDS.observe(time.perf_counter() - started)
        metrics.ROUTING_DECISIONS.labels(
            verdict=decision.verdict.value, cluster=decision.cluster or ""
        ).inc()
        for verdict in decision.clusters:
            if verdict.cluster != decision.cluster:
                metrics.ROUTING_REJECTIONS.labels(
                    cluster=verdict.cluster, reason=verdict.reason.value
                ).inc()
        return decision

    def route_queued(self, now: float) -> None:
        """One routing turn (see the module docstring)."""
        changed = self._queue.take_changed()
        snapshot = self._cache.snapshot()
        if not changed and not self._passed_over and snapshot is self._routed_on:
            return
        self._passed_over = False
        tie = itertools.count()
        heap: list[tuple[Any, int, ShapeGroup, int, Job]] = []

        def push(group: ShapeGroup, start: int) -> None:
            head = self._head(group, start, now)
            if head is not None:
                heapq.heappush(heap, (self._order(head[1]), next(tie), group, *head))

        for group in self._queue.groups():
            push(group, 0)
        rejected: dict[str, tuple[Snapshot, Decision]] = {}
        while heap:
            key, _, group, index, job = heapq.heappop(heap)
            fresh = self._order(job)
            if fresh != key and heap and fresh > heap[0][0]:
                heapq.heappush(heap, (fresh, next(tie), group, index, job))
                continue
            earlier = rejected.get(group.shape)
            waited = self._waits.get(group.shape)
            if earlier is not None and earlier[0] is snapshot:
                decision = earlier[1]
            elif waited is not None and waited[0] == self._generation(snapshot):
                decision = waited[1]
            else:
                decision = self.route(job, snapshot)
            if decision.verdict is Verdict.REJECT:
                rejected[group.shape] = (snapshot, decision)
                self._mail.post(job.id, Mail(Event.REJECTED, {"reason": decision.message()}))
            elif decision.verdict is Verdict.WAIT or decision.placement is None:
                self._waits[group.shape] = (self._generation(snapshot), decision)
                self._wait(group, decision.message())
                continue
            else:
                self._place(job, decision.placement, decision.message(), now)
                # Only a placement changes what the next decision must see.
                snapshot = self._cache.snapshot()
            push(group, index + 1)
        self._routed_on = snapshot
        if len(self._waits) > 2 * len(self._queue.groups()) + 64:
            shapes = {group.shape for group in self._queue.groups()}
            self._waits = {s: w for s, w in self._waits.items() if s in shapes}

    def _generation(self, snapshot: Snapshot) -> tuple[Any, ...]:
        """What must change before a waiting shape may run (``ClusterState.generation``)."""
        if self._generations is None or self._generations[0] is not snapshot:
            key = tuple((c.name, c.generation, c.health) for c in snapshot.clusters)
            self._generations = (snapshot, key)
        return self._generations[1]

    def _head(self, group: ShapeGroup, start: int, now: float) -> tuple[int, Job] | None:
        """The first job of ``group`` from ``start`` that may be routed now."""
        for index, job in self._queue.jobs(group, start):
            if job.state is State.QUEUED and job.not_before <= now and not self._mail.busy(job.id):
                return index, job
            self._passed_over = True
        return None

    def _wait(self, group: ShapeGroup, reason: str) -> None:
        """Give the waiting reason to the group's jobs: all of them when it changed, else
        those that joined since it was given (the reason is for readers; it is written
        with the job's next change)."""
        if group.reason == reason:
            jobs = [job for job_id in group.joined if (job := self._table.get(job_id))]
        else:
            jobs = [job for _, job in self._queue.jobs(group)]
        group.reason = reason
        group.joined.clear()
        for job in jobs:
            if job.reason != reason and not self._mail.busy(job.id):
                self._table.replace_if_same(job, reason=reason)

    def _place(self, job: Job, placement: Placement, message: str, now: float) -> None:
        """Assume the placement, so the next decision sees it taken; the job's mailbox
        writes the attempt ahead and then creates the pod."""
        manifest = build_pod(
            job.spec,
            placement,
            job_id=job.id,
            attempt=job.attempts,
            submitted_at=datetime.fromtimestamp(job.submitted_at, UTC),
        )
        attempt = Attempt(
            job.attempts,
            placement.cluster,
            manifest["metadata"]["name"],
            manifest["metadata"]["namespace"],
            now,
        )
        self._cache.assume(attempt.cluster, manifest)
        payload = {"attempt": attempt, "manifest": manifest, "reason": message}
        self._mail.post(job.id, Mail(Event.PLACED, payload))
