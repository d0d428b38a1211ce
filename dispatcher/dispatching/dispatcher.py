"""The dispatcher: jobs in, pods out, every change decided by the job state machine.

How work flows (``run_once`` is one turn of the loop; ``start`` runs it on a thread):

1. **Submit** (API thread): route on a snapshot; the record is created synchronously
   (fenced by the leader term) before the job exists anywhere else; 201.
2. **Route** (``run_once``): queued jobs in fair-share order (priority, then the tenants'
   weighted dominant shares, then age; quotas and reservations: ``core.fairshare``); a
   placement is assumed in the cache at once (the next decision sees it taken) and handed
   to the job as ``PLACED``.
3. **Per-job mailboxes**: every event of a job (placement, the create's answer, informer
   observations, timers, cancel) goes to its mailbox, drained by one runner task at a
   time, so a job's events are handled one by one and in order, never concurrently. For
   each, ``dispatcher.core.lifecycle.transition`` gives the next state and the actions;
   ``WRITE_RECORD`` comes first and nothing after it happens unless the record was written
   (synchronously, with its resourceVersion, under the current leader term).
4. **Write-ahead launching**: ``PLACED`` writes "attempt N goes to cluster C as pod P",
   then creates P. An answer that leaves it unknown whether P exists (timeout, 5xx, 429,
   unreachable) is resolved by reading P later, never by guessing: present -> adopted,
   absent and C reachable -> created again under the same name, C unreachable -> wait.
5. **Timers** (``run_once``): resolve reads due, unschedulable and startup timeouts,
   clusters unreachable past their policy, lingering finished pods, expired outcomes.

Until ``reattach`` has rebuilt the jobs from the records, every job request is refused
with ``StoreError`` (the API's 503 + ``Retry-After``): a replica that has just taken the
Lease must not answer "no such job" (404) about a job whose record it has not read yet.

Guarantees (each checked by tests/simulation and by the stack tests): one live pod per job
(an attempt's pod name is fixed in its record before it is created; pods of any other
attempt are deleted as soon as they are seen; a relaunch while the old cluster is
unreachable happens only under that cluster's ``relaunch`` policy, and is counted);
a record exists before its pod; a finished job never changes; a cancelled job's pod is
deleted, also when it was created after the cancel.

Where each part lives: ``cycle`` (routing turns), ``mailbox`` (per-job serialisation),
``facts`` (what an event does to a job, pure), ``recording`` (fenced record writes),
``pods`` (the side effects on clusters), ``pod_events`` (informer events judged against
the jobs), ``timers`` (what time has brought, pure), ``recovery`` (re-attaching after a
restart); this module wires them and carries out one state-machine step per event.

I/O: through the injected cache, cluster connections, record store and runner only.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import structlog

from dispatcher import metrics, tracing
from dispatcher.core import CONTAINER_NAME, RoutingPolicy, TaskSpec, Verdict, route
from dispatcher.core.backoff import backoff_delay
from dispatcher.core.fairshare import FairShareSettings
from dispatcher.core.lifecycle import LIVE, Action, Event, State, transition
from dispatcher.core.podsecurity import submission_problems
from dispatcher.core.routing import Decision
from dispatcher.core.tenancy import ClusterAllowance, TenantPolicy, cluster_allowance
from dispatcher.core.xcom import XCOM_SIDECAR_NAME, XComError, parse_sidecar_log
from dispatcher.dispatching import facts, recovery, timers, traces
from dispatcher.dispatching.copies import Copier, KVReader
from dispatcher.dispatching.cycle import Router
from dispatcher.dispatching.fairness import FairShare
from dispatcher.dispatching.jobs import Attempt, Job, job_id_for
from dispatcher.dispatching.mailbox import RESOLVE, Mail, Mailboxes
from dispatcher.dispatching.pod_events import PodEvents
from dispatcher.dispatching.pods import PodActions, deletes_pod
from dispatcher.dispatching.ports import Cache, Connection, LogStream
from dispatcher.dispatching.recording import Recorder
from dispatcher.dispatching.records import Fence, RecordStore
from dispatcher.dispatching.runner import Runner, ThreadRunner
from dispatcher.dispatching.table import JobTable
from dispatcher.dispatching.tracking import Reachability
from dispatcher.errors import (
    Conflict,
    DispatcherError,
    Fenced,
    SpecError,
    StaleRecord,
    StoreError,
)
from dispatcher.settings import ServiceSettings, UnreachablePolicy

log = structlog.get_logger("dispatcher.dispatching")

__all__ = ["Cache", "Connection", "Dispatcher"]


def _no_election() -> Fence:
    return Fence(holder="", term=0)


def _ended_attempt(old: Job, new: Job) -> Attempt | None:
    """The attempt this step ended (the job finished, or its attempt was given up), whose
    dependency copies it no longer needs."""
    attempt = old.attempt
    if attempt is None or old.state.finished:
        return None
    if new.state.finished or new.attempt is None or new.attempt.number != attempt.number:
        return attempt
    return None


class Dispatcher:
    def __init__(
        self,
        cache: Cache,
        store: RecordStore,
        *,
        clusters: tuple[str, ...],
        policy: RoutingPolicy | None = None,
        service: ServiceSettings | None = None,
        unreachable: Mapping[str, UnreachablePolicy] | None = None,
        clock: Callable[[], float] = time.time,
        fence: Callable[[], Fence | None] = _no_election,
        runner: Runner | None = None,
        draw: Callable[[], float] = random.random,
        on_fenced: Callable[[], None] | None = None,
        tenants: Mapping[str, TenantPolicy] | None = None,
        fair_share: FairShareSettings | None = None,
        vault: KVReader | None = None,
    ) -> None:
        self._cache = cache
        #: Replaced whole by ``set_fair_share`` (a settings reload); read once per cycle.
        self._fair_share = fair_share or FairShareSettings()
        # ``None``: no tenants (a service without authentication): nothing restricted.
        self._tenants = dict(tenants) if tenants is not None else None
        self._clusters = clusters
        self._policy = policy or RoutingPolicy()
        self._service = service or ServiceSettings()
        self._unreachable = dict(unreachable or {})
        self._clock = clock
        self._draw = draw
        # Tests pass a runner they drive themselves (``None`` for production).
        self._own_runner = ThreadRunner() if runner is None else None
        self._runner: Runner = runner or self._own_runner  # type: ignore[assignment]
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Set once ``reattach`` rebuilt the jobs: until then, job requests are refused.
        self._attached = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs = JobTable()
        self._records = Recorder(store, fence, on_fenced)
        self._mail = Mailboxes(self._runner, self._handle, clock=clock, draw=draw)
        self._reach = Reachability()
        self._copies = Copier(cache, vault)
        self._next_sweep = 0.0
        self._pods = PodActions(
            cache,
            self._jobs,
            self._mail,
            self._runner,
            self._reach,
            service=self._service,
            clock=clock,
            draw=draw,
            copier=self._copies,
        )
        self._events = PodEvents(
            cache,
            self._jobs,
            self._mail,
            self._pods,
            self._reach,
            clock=clock,
            wake=self._wake.set,
            stopped=lambda: self._records.fenced,
        )
        self.fair = FairShare(cache, self._jobs, lambda: self._fair_share)
        self._router = Router(
            cache, self._jobs, self._mail, self._policy, self.allowance, fair=self.fair
        )
        cache.add_listener(self._events.on_event)

    # ----- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Rebuild state from the store and the clusters, then run the loop."""
        self.reattach()
        self._thread = threading.Thread(target=self._run, name="dispatch-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self._own_runner is not None:
            self._own_runner.shutdown()

    def wake(self) -> None:
        self._wake.set()

    @property
    def fenced(self) -> bool:
        """True once a write was refused for the leader term: this replica stopped."""
        return self._records.fenced

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set() and not self.fenced:
            self._wake.wait(timeout=self._service.cycle_interval_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
                failures = 0
            except Exception:  # the loop must survive any one bad turn, and back off
                failures += 1
                metrics.THREAD_RESTARTS.labels(thread="dispatch-loop").inc()
                log.exception("dispatch.cycle_failed", failures=failures)
                self._stop.wait(backoff_delay(failures, base=0.5, cap=30.0, draw=self._draw()))

    def run_once(self) -> None:
        """One turn: due timers and retries, then routing of queued jobs."""
        if self.fenced or not self._attached.is_set():
            return
        now = self._clock()
        self._check_timers(now)
        if now >= self._next_sweep and self._copies.enabled():
            self._next_sweep = now + self._service.copy_sweep_interval_seconds
            self._runner.submit(self.sweep_copies)
        self._router.route_queued(now)
        self._publish()

    def sweep_copies(self) -> None:
        """Delete the dependency copies no live job uses any more, in every cluster
        (``dispatching.copies``); a cluster that cannot be read is tried next time."""
        for cluster in self._clusters:
            try:
                self._copies.sweep(cluster, functools.partial(self._live_on, cluster))
            except DispatcherError as exc:
                log.warning("copy.sweep_failed", cluster=cluster, error=str(exc))

    def _live_on(self, cluster: str) -> set[str]:
        return {
            j.id
            for j in self._jobs.select(
                lambda j: j.state in LIVE and j.attempt is not None and j.attempt.cluster == cluster
            )
        }

    def reattach(self) -> None:
        """Rebuild jobs from the records, then judge every managed pod against them
        (``dispatching.recovery``); from then on, informer events are judged too."""
        recovery.reattach(
            self._records,
            self._jobs,
            self._cache,
            self._clusters,
            mail=self._mail,
            pods=self._pods,
            events=self._events,
            reach=self._reach,
            clock=self._clock,
        )
        # Copies of jobs that ended while no dispatcher ran (or whose release failed):
        # found by their label, judged against the jobs just rebuilt.
        self.sweep_copies()
        self._next_sweep = self._clock() + self._service.copy_sweep_interval_seconds
        self._attached.set()
        self._publish()

    def _require_attached(self) -> None:
        """Refuse a job request (to be retried) until the jobs were rebuilt from the
        records: an empty table would call every job unknown."""
        if not self._attached.is_set():
            raise StoreError("this replica is still reading the job records; retry")

    @property
    def fair_share(self) -> FairShareSettings:
        return self._fair_share

    def set_fair_share(self, settings: FairShareSettings) -> None:
        """New fair-share settings (a reload): the next cycle orders and admits by them."""
        self._fair_share = settings
        self.wake()

    def allowance(self, tenant: str | None) -> ClusterAllowance | None:
        """The clusters jobs of ``tenant`` may use (``None``: any), from the settings of
        now: a job queued before a restart follows its tenant's current settings."""
        return cluster_allowance(tenant, self._tenants)

    # ----- submission -----------------------------------------------------------------
    def submit(
        self, spec: TaskSpec, tenant: str | None = None, traceparent: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Accept a validated (and authorized) task of ``tenant``; returns (job view,
        created). The same key of the same tenant -> the same job. ``traceparent``: the
        submitter's W3C trace context, which the job's trace joins (invalid: ignored).

        Raises ``SpecError`` (nothing created) when the task breaks pod security.
        """
        self._check_pod_security(spec, tenant)
        self._require_attached()
        job_id = job_id_for(spec.idempotency_key, tenant)
        traceparent = tracing.parse_traceparent(traceparent)
        with tracing.live(tracing.JobTrace(job_id, traceparent), "submit") as span:
            view, created = self._submit(job_id, spec, tenant, traceparent)
            if span is not None:
                span.set_attribute("dispatcher.job.created", created)
                span.set_attribute("dispatcher.job.state", str(view["state"]))
        return view, created

    def _submit(
        self, job_id: str, spec: TaskSpec, tenant: str | None, traceparent: str | None
    ) -> tuple[dict[str, Any], bool]:
        # A concurrent submission of the same key finishes first; then it is a duplicate.
        with self._jobs.submitting(job_id) as existing:
            if existing is not None:
                return self._duplicate(existing, spec), False
            job = self._new_job(job_id, spec, tenant, traceparent)
            # The record exists before any pod: a restart (or the next leader) finds it.
            try:
                job = replace(job, version=self._records.create(job))
            except StaleRecord:
                # Created by an earlier leader (or replica) a moment ago: the same job.
                stored = self._records.read(job_id)
                if stored is None:
                    raise
                kept = self._jobs.adopt(Job.from_record(stored.record, stored.version))
                return self._duplicate(kept, spec), False
            self._jobs.put(job)
        if job.state is State.REJECTED:
            traces.finished(job, job.submitted_at)
            metrics.SUBMISSIONS.labels(outcome="rejected").inc()
            metrics.JOBS_FINISHED.labels(cluster="", outcome="rejected", failure_class="").inc()
            log.info("job.rejected", job_id=job_id, reason=job.reason)
        else:
            metrics.SUBMISSIONS.labels(outcome="accepted").inc()
            log.info("job.submitted", job_id=job_id, name=spec.name)
            self.wake()
        return job.view(), True

    def _new_job(
        self, job_id: str, spec: TaskSpec, tenant: str | None, traceparent: str | None
    ) -> Job:
        """The job as submitted: queued, or rejected at once if no cluster could ever run it."""
        now = self._clock()
        job = Job(
            id=job_id,
            spec=spec,
            submitted_at=now,
            idempotency_key=spec.idempotency_key,
            tenant=tenant,
            traceparent=traceparent,
            since=now,
        )
        with tracing.child("route") as span:
            decision = self._router.route(job, self._cache.snapshot())
            if span is not None:
                span.set_attribute("dispatcher.routing.verdict", decision.verdict.value)
                span.set_attribute("dispatcher.routing.reason", decision.message()[:1024])
        job = replace(job, reason=decision.message())
        if decision.verdict is Verdict.REJECT:
            job = replace(job, state=State.REJECTED, message=job.reason, finished_at=now)
        return job

    def _duplicate(self, existing: Job, spec: TaskSpec) -> dict[str, Any]:
        if existing.spec != spec:
            metrics.SUBMISSIONS.labels(outcome="conflict").inc()
            raise Conflict(
                f"idempotency key {spec.idempotency_key!r} was used for a different task",
                job_id=existing.id,
            )
        metrics.SUBMISSIONS.labels(outcome="duplicate").inc()
        return existing.view()

    def _check_pod_security(self, spec: TaskSpec, tenant: str | None) -> None:
        """The task meets the loosest Pod Security level of the clusters it may use (the
        tenant's allow-list and its own), and its tenant's ``pod_security`` when stricter."""
        allowance = self.allowance(tenant)
        clusters = (
            state.info
            for state in self._cache.snapshot().clusters
            if allowance is None or state.name in allowance.clusters
        )
        policy = self._tenants.get(tenant) if self._tenants and tenant else None
        floor = policy.pod_security if policy is not None else None
        problems = submission_problems(spec, clusters, floor=floor)
        if problems:
            metrics.SUBMISSIONS.labels(outcome="invalid").inc()
            raise SpecError(problems)

    def explain(self, spec: TaskSpec, tenant: str | None = None) -> Decision:
        """Route without launching (the API's dry run), as for a job of ``tenant``."""
        self._check_pod_security(spec, tenant)
        return route(spec, self._cache.snapshot(), self._policy, self.allowance(tenant))

    # ----- reads ----------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        self._require_attached()
        return self._view(self._jobs.require(job_id))

    def spec(self, job_id: str) -> TaskSpec:
        """The task the job was submitted with (as validated), e.g. to explain its routing."""
        self._require_attached()
        return self._jobs.require(job_id).spec

    def find(self, idempotency_key: str, tenant: str | None = None) -> dict[str, Any]:
        """The job ``tenant`` submitted with this key."""
        return self.get(job_id_for(idempotency_key, tenant))

    def list(
        self,
        *,
        state: str | None = None,
        cluster: str | None = None,
        limit: int = 1000,
        visible: Callable[[str | None], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs by submission time; ``visible(tenant)`` filters by owner before the limit."""
        self._require_attached()
        jobs = sorted(
            self._jobs.select(
                lambda j: (
                    (state is None or j.state.value == state)
                    and (cluster is None or j.cluster == cluster)
                    and (visible is None or visible(j.tenant))
                )
            ),
            key=lambda j: (j.submitted_at, j.id),
        )
        return [self._view(j) for j in jobs[:limit]]

    def _view(self, job: Job) -> dict[str, Any]:
        """What the API returns about ``job``, with where it stands in the queue."""
        view = job.view()
        view["queue"] = self.fair.queue(job.id) if job.state is State.QUEUED else None
        return view

    def listen(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(job_id)`` after every change readers can see of a job (for
        waiters that are not threads: the API's long polls). It runs on the thread that
        made the change and must not block."""
        self._jobs.listen(listener)

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Block until the job has finished or ``timeout`` passed (long poll)."""
        self._require_attached()
        return self._view(self._jobs.wait_finished(job_id, timeout, time.monotonic))

    def logs(
        self, job_id: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> LogStream:
        self._require_attached()
        job = self._jobs.require(job_id)
        attempt = job.attempt
        if attempt is None:
            raise Conflict(f"job {job_id} has no pod yet ({job.state.value})", job_id=job_id)
        return self._cache.connection(attempt.cluster).pod_logs(
            attempt.namespace, attempt.pod, CONTAINER_NAME, follow, None, tail_lines
        )

    def xcom(self, job_id: str) -> Any:
        """The value a succeeded job's task wrote to ``/airflow/xcom/return.json`` (``None``
        if it wrote none), read from its XCom sidecar's log in the pod's cluster.

        ``Conflict`` unless the job succeeded with ``xcom_sidecar``, or when the sidecar's
        log holds no complete value; a ``ClusterError`` (404) when the pod is gone.
        """
        self._require_attached()
        job = self._jobs.require(job_id)
        if not job.spec.xcom_sidecar:
            raise Conflict(
                f"job {job_id} was submitted without xcom_sidecar: it has no return.json "
                "to read (its termination message is the job's result)",
                job_id=job_id,
            )
        attempt = job.attempt
        if job.state is not State.SUCCEEDED or attempt is None:
            raise Conflict(
                f"job {job_id} is {job.state.value}: return.json is read once it succeeded",
                job_id=job_id,
            )
        lines = self._cache.connection(attempt.cluster).pod_logs(
            attempt.namespace, attempt.pod, XCOM_SIDECAR_NAME
        )
        try:
            return parse_sidecar_log(lines, attempt.pod, max_bytes=self._service.max_xcom_bytes)
        except XComError as exc:
            raise Conflict(f"job {job_id}: {exc}", job_id=job_id) from None
        finally:
            close = getattr(lines, "close", None)
            if close is not None:
                close()

    def counts(self) -> dict[tuple[str, str], int]:
        return self._jobs.counts()

    # ----- client actions -------------------------------------------------------------
    def request_cancel(self, job_id: str) -> threading.Event:
        """Post a cancel; the returned event is set once it was handled (record written)."""
        self._require_attached()
        self._jobs.require(job_id)
        return self._mail.post(job_id, Mail(Event.CANCEL)).done

    def cancel(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Cancel; answer once the record says cancelling, or cancelled if the pod went
        within ``cancel_answer_wait_seconds`` (or the job had already finished)."""
        self._require_attached()
        self._jobs.require(job_id)
        mail = self._mail.post(job_id, Mail(Event.CANCEL))
        if not mail.done.wait(timeout):
            raise StoreError(f"cancel of {job_id} not recorded within {timeout:.0f}s; retry")
        if mail.error is not None:
            raise mail.error
        # Usually the pod is gone a moment later; a long grace period answers "cancelling".
        return self.wait(job_id, timeout=self._service.cancel_answer_wait_seconds)

    def request_acknowledge(self, job_id: str) -> threading.Event:
        self._require_attached()
        job = self._jobs.require(job_id)
        if not job.state.finished:
            raise Conflict(f"job {job_id} is {job.state.value}, not finished", job_id=job_id)
        return self._mail.post(job_id, Mail(Event.FORGET)).done

    def acknowledge(self, job_id: str, timeout: float = 30.0) -> None:
        """The client has read the outcome: forget the job (its pod and record go)."""
        done = self.request_acknowledge(job_id)
        if not done.wait(timeout):
            raise StoreError(f"acknowledgement of {job_id} not recorded in {timeout:.0f}s")

    # ----- one state-machine step per mail ----------------------------------------------
    def _handle(self, job_id: str, mail: Mail) -> None:
        """The mailbox's handler: decide, write the record, then carry out the actions."""
        if self.fenced:
            return
        job = self._jobs.get(job_id)
        if job is None:
            self._orphaned_mail(mail)
            return
        if mail.kind == RESOLVE:
            self._pods.resolve(job)
            return
        event = facts.refine(job, Event(mail.kind), mail.payload, self._service)
        step = transition(job.state, event)
        if step is None:
            metrics.ILLEGAL_TRANSITIONS.labels(state=job.state.value, event=event.value).inc()
            log.info("job.event_ignored", job_id=job_id, state=job.state.value, on=event.value)
            self._orphaned_mail(mail)
            return
        now = self._clock()
        new = facts.advance(
            job,
            step.target,
            event,
            mail.payload,
            step.actions,
            now=now,
            service=self._service,
            draw=self._draw,
        )
        # ``WRITE_RECORD`` is always the first action with an effect (END_ATTEMPT is folded
        # into ``facts.advance``): nothing happens unless the record says so first.
        if Action.WRITE_RECORD in step.actions:
            written = self._write(job, new, mail, now)
            if written is None:
                self._orphaned_mail(mail)
                return
            new = written
        else:
            new = self._jobs.commit(new)
        for action in step.actions:
            new = self._act(new, action, mail.payload.get("manifest"))
        ended = _ended_attempt(job, new)
        if ended is not None:
            self._pods.release_copies(new, ended)

    def _orphaned_mail(self, mail: Mail) -> None:
        # A placement that will not be launched gives its assumed room back.
        if mail.kind is Event.PLACED:
            attempt: Attempt = mail.payload["attempt"]
            self._cache.forget(attempt.cluster, attempt.pod)

    def _write(self, old: Job, new: Job, mail: Mail, now: float) -> Job | None:
        """Write ``new``'s record over ``old``'s version; the committed job or ``None``.
        ``now``: when the event was decided (the moment ``new``'s state began).

        ``None`` means nothing may follow: the event is decided again later on the record
        as it is now (stale), retried after a backoff (store error), or this replica has
        stopped (fenced).
        """
        try:
            version = self._records.update(old, new)
        except Fenced as exc:
            mail.error = exc
            return None
        except StaleRecord:
            self._reread(old, mail)
            return None
        except StoreError as exc:
            log.warning("job.record_write_failed", job_id=old.id, error=str(exc))
            self._mail.retry(old.id, mail)
            return None
        written = replace(new, version=version)
        if written.state is State.QUEUED:
            self._wake.set()  # route it now, not at the next timer turn
        if new.state is not old.state:
            written = replace(written, since=now)
            traces.changed(old, written, now)
            self._finished_metrics(old, written)
            log.info(
                "job.transition",
                job_id=old.id,
                state=written.state.value,
                previous=old.state.value,
                cluster=written.cluster or "",
                attempt=written.attempt.number if written.attempt else None,
            )
        return self._jobs.commit(written)

    def _reread(self, old: Job, mail: Mail) -> None:
        """Someone else wrote the record: take what is there and decide the event again."""
        try:
            stored = self._records.read(old.id)
        except StoreError as exc:
            log.warning("job.record_reread_failed", job_id=old.id, error=str(exc))
            self._mail.retry(old.id, mail)
            return
        if stored is None:
            self._jobs.drop(old.id)
            return
        fresh = Job.from_record(stored.record, stored.version)
        self._jobs.put(fresh)
        log.info("job.record_changed_elsewhere", job_id=old.id, state=fresh.state.value)
        self._mail.post(old.id, Mail(mail.kind, mail.payload))

    def _finished_metrics(self, old: Job, new: Job) -> None:
        if new.state is State.RUNNING:
            metrics.SUBMIT_TO_RUNNING_SECONDS.labels(cluster=new.cluster or "").observe(
                max(0.0, self._clock() - new.submitted_at)
            )
        if new.state is State.LAUNCHING:
            metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, self._clock() - new.submitted_at))
            self.fair.observe_wait(new, self._clock())
        if not new.state.finished or old.state.finished:
            return
        failure = new.failure.value if new.failure and new.state is State.FAILED else ""
        metrics.JOBS_FINISHED.labels(
            cluster=new.cluster or "", outcome=new.state.value, failure_class=failure
        ).inc()
        metrics.JOB_DURATION_SECONDS.labels(outcome=new.state.value).observe(
            max(0.0, (new.finished_at or 0.0) - new.submitted_at)
        )
        log.info(
            "job.finished",
            job_id=new.id,
            state=new.state.value,
            cluster=new.cluster or "",
            failure_class=failure,
        )
        # The message may quote the task's log tail (redacted, truncated, still the task's
        # own words): kept out of the info log, readable in the job itself.
        log.debug("job.finished_message", job_id=new.id, message=new.message)

    def _act(self, job: Job, action: Action, manifest: dict[str, Any] | None = None) -> Job:
        """Carry out one side effect; returns the job as it is afterwards."""
        attempt = job.attempt
        if action is Action.CREATE_POD and attempt is not None:
            self._pods.create(job, attempt, manifest)
        elif action is Action.DELETE_POD and attempt is not None:
            grace = (
                0
                if job.state.finished
                else self._service.cancel_grace(job.spec.termination_grace_period)
            )
            self._pods.delete(job, attempt, grace)
        elif action is Action.CLEANUP_POD and attempt is not None:
            return self._pods.cleanup(job, attempt)
        elif action is Action.DELETE_RECORD:
            self._forget(job)
        # WRITE_RECORD and END_ATTEMPT were done before; RESOLVE_LATER: ``facts.advance``
        # set ``resolve_at`` and the timers post the read.
        return job

    def _forget(self, job: Job) -> None:
        """Acknowledged or expired: the pod first (if it lingers), then the record."""
        attempt = job.attempt
        if attempt is not None and not job.cleaned and deletes_pod(job):
            self._pods.delete(job, attempt, 0)
        try:
            self._records.delete(job.id)
        except Fenced:
            return
        except StoreError as exc:
            log.warning("job.record_delete_failed", job_id=job.id, error=str(exc))
            self._mail.post_later(job.id, Mail(Event.FORGET), 5.0)
            return
        self._jobs.drop(job.id)

    # ----- timers and gauges ------------------------------------------------------------
    def _check_timers(self, now: float) -> None:
        self._mail.deliver_due(now)
        down = self._reach.since()
        for job in self._jobs.all():
            if job.state.finished:
                due = timers.finished_due(job, now, self._service)
            elif job.attempt is None or self._mail.busy(job.id):
                continue
            else:
                due = timers.live_due(
                    job,
                    now,
                    down_since=down.get(job.attempt.cluster),
                    policy=self._unreachable.get(job.attempt.cluster) or UnreachablePolicy(),
                    service=self._service,
                )
            if due.touch:
                self._jobs.touch(job.id, **due.touch)
            # A timer's mail that has not been handled yet (a write being retried) is not
            # posted again every turn.
            waiting = self._mail.pending(job.id) if due.posts else set()
            for post in due.posts:
                if post.kind in waiting:
                    continue
                if post.failover is not None and job.attempt is not None:
                    metrics.FAILOVERS.labels(
                        from_cluster=job.attempt.cluster, reason=post.failover
                    ).inc()
                self._mail.post(job.id, Mail(post.kind, dict(post.payload)))

    def _publish(self) -> None:
        counts = self.counts()
        metrics.record_jobs((phase, cluster, n) for (phase, cluster), n in counts.items())
        metrics.QUEUE_DEPTH.set(sum(n for (phase, _), n in counts.items() if phase == "queued"))
        # The wait histogram only counts jobs that left the queue; a stuck queue shows here.
        queued = [j.submitted_at for j in self._jobs.select(lambda j: j.state is State.QUEUED)]
        metrics.QUEUE_OLDEST_SUBMISSION.set(min(queued, default=0.0))
        self.fair.publish(self._cache.snapshot(), self._clock())
