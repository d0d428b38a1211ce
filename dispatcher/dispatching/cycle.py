"""The dispatch cycle's routing turn: queued jobs, in fair-share order, to placements.

Each turn takes the queued jobs with nothing in their mailbox (their state is settled),
routes each on one snapshot of every cluster, and for a placement assumes the pod in the
cache at once (the next decision sees the room taken) and posts ``PLACED`` to the job's
mailbox, which writes the attempt ahead and then creates the pod. Jobs that ask for the
same thing get the same answer until a placement changes the snapshot, so a long queue of
alike jobs costs one decision.

I/O: the cache's snapshot and assumed pods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from dispatcher import metrics
from dispatcher.core import Placement, RoutingPolicy, Snapshot, Verdict, build_pod, route
from dispatcher.core.fairshare import FairShareSettings
from dispatcher.core.lifecycle import Event, State
from dispatcher.core.routing import Decision
from dispatcher.core.tenancy import ClusterAllowance
from dispatcher.dispatching.fairness import FairShare
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.dispatching.mailbox import Mail, Mailboxes
from dispatcher.dispatching.ports import Cache
from dispatcher.dispatching.table import JobTable

__all__ = ["Router", "routing_shape"]

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
        fair: FairShare | None = None,
    ) -> None:
        self._cache = cache
        self._table = table
        self._mail = mail
        self._policy = policy
        #: Fair share (FAIR SHARE HOOK below); without settings: priority, then age.
        self._fair = fair or FairShare(cache, table, FairShareSettings)
        #: The clusters a tenant's jobs may use: routing never places a job elsewhere.
        self._allowance = allowance

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
        heads = self._table.select(
            lambda j: j.state is State.QUEUED and j.not_before <= now and not self._mail.busy(j.id)
        )
        if not heads:
            return
        snapshot = self._cache.snapshot()
        # FAIR SHARE HOOK (dispatching.fairness over core.fairshare): the order of the
        # waiting jobs, the snapshot each is routed on (nodes reserved for others taken
        # away), quota admission, and reservations for jobs that fit nowhere now.
        fair = self._fair.begin(heads, snapshot, now)
        waiting: dict[str, Decision] = {}
        for job in fair.order():
            shape = routing_shape(job) + fair.view_key(job)
            decision = waiting.get(shape) or self.route(job, fair.view(job))
            if decision.verdict is Verdict.REJECT:
                self._mail.post(job.id, Mail(Event.REJECTED, {"reason": decision.message()}))
                continue
            if decision.verdict is Verdict.WAIT or decision.placement is None:
                waiting[shape] = decision
                # The reason is for readers; written with the job's next change.
                self._table.replace_if_same(job, reason=fair.waiting(job, decision))
                continue
            held = fair.hold(job, decision)
            if held is not None:
                waiting[shape] = decision
                self._table.replace_if_same(job, reason=held)
                continue
            waiting.clear()
            self._place(job, fair.placement(job, decision.placement), decision.message(), now)
            # Only a placement changes what the next decision must see.
            snapshot = self._cache.snapshot()
            fair.placed(job, decision.placement.cluster, snapshot)
        fair.end()

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
