"""The dispatcher: jobs in, pods out, every change decided by the job state machine.

How work flows (``run_once`` is one turn of the loop; ``start`` runs it on a thread):

1. **Submit** (API thread): route on a snapshot; the record is created synchronously
   (fenced by the leader term) before the job exists anywhere else; 201.
2. **Route** (``run_once``): queued jobs by priority then age; a placement is assumed in
   the cache at once (the next decision sees it taken) and handed to the job as ``PLACED``.
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

Guarantees (each checked by tests/simulation and by the stack tests): one live pod per job
(an attempt's pod name is fixed in its record before it is created; pods of any other
attempt are deleted as soon as they are seen; a relaunch while the old cluster is
unreachable happens only under that cluster's ``relaunch`` policy, and is counted);
a record exists before its pod; a finished job never changes; a cancelled job's pod is
deleted, also when it was created after the cancel.

I/O: through the injected cache, cluster connections, record store and runner only.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from dispatcher import metrics
from dispatcher.core import (
    CONTAINER_NAME,
    FailureClass,
    Health,
    JobPhase,
    OnFinishAction,
    RoutingPolicy,
    Snapshot,
    TaskSpec,
    Verdict,
    build_pod,
    placement_for,
    route,
)
from dispatcher.core.backoff import backoff_delay
from dispatcher.core.lifecycle import LIVE, Action, Event, State, transition
from dispatcher.core.routing import Decision
from dispatcher.dispatching.jobs import Attempt, Job, job_id_for
from dispatcher.dispatching.records import Fence, RecordStore
from dispatcher.dispatching.runner import Runner, ThreadRunner
from dispatcher.dispatching.tracking import Observation, alive, observe, pod_identity
from dispatcher.errors import (
    ApiError,
    ClusterError,
    Conflict,
    DispatcherError,
    ErrorKind,
    Fenced,
    NotFound,
    StaleRecord,
    StoreError,
)
from dispatcher.settings import ServiceSettings, UnreachablePolicy

log = structlog.get_logger("dispatcher.dispatching")

__all__ = ["Cache", "Connection", "Dispatcher"]


class Connection(Protocol):
    """What the dispatcher needs from one cluster (``dispatcher.clusters``)."""

    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]: ...
    def delete_pod(
        self, namespace: str, name: str, grace_period_seconds: int | None = None
    ) -> None: ...
    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def pod_logs(  # noqa: PLR0917 - mirrors clusters.ClusterConnection.pod_logs
        self,
        namespace: str,
        name: str,
        container: str | None = None,
        follow: bool = False,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
    ) -> Iterator[str]: ...


class Cache(Protocol):
    """What the dispatcher needs from the cluster cache (``dispatcher.clusters``)."""

    def snapshot(self) -> Snapshot: ...
    def assume(self, cluster: str, pod: Mapping[str, Any]) -> None: ...
    def forget(self, cluster: str, pod_name: str) -> None: ...
    def add_listener(
        self, callback: Callable[[str, str, str, dict[str, Any] | None], None]
    ) -> None: ...
    def health(self, cluster: str) -> Health: ...
    def connection(self, cluster: str) -> Connection: ...
    def managed_pods(self, cluster: str) -> list[dict[str, Any]]: ...
    def synced(self, cluster: str) -> bool: ...


_ROUTING_FIELDS = frozenset(
    {
        "container_resources",
        "node_selector",
        "tolerations",
        "affinity",
        "requirements",
        "namespace",
        "priority_class_name",
    }
)
#: While the outcome of a create is unknown (or a delete was sent), the pod is read again
#: after this long at the latest: a dropped watch event cannot leave a job waiting.
_RESOLVE_SAFETY_SECONDS = 15.0
#: States that wait for a pod to appear or go: read again if nothing was heard.
_UNRESOLVED = frozenset({State.LAUNCHING, State.CANCELLING, State.MOVING})
_RESOLVE = "resolve"  # a mailbox item that reads the attempt's pod; not a state change


#: The condition a job carries while its attempt's cluster does not answer.
UNREACHABLE = "ClusterUnreachable"


def _unreachable_condition(attempt: Attempt, since: float | None, now: float) -> dict[str, Any]:
    if since is None:
        return {
            "type": UNREACHABLE,
            "status": False,
            "reason": "ClusterBack",
            "message": f"{attempt.cluster} answers again",
        }
    return {
        "type": UNREACHABLE,
        "status": True,
        "reason": "ClusterUnreachable",
        "message": f"{attempt.cluster} has not answered for {now - since:.0f}s; the job "
        "waits for it (its pod may still be running there)",
    }


def _no_election() -> Fence:
    return Fence(holder="", term=0)


def _routing_shape(job: Job) -> str:
    """What routing looks at, as a key: jobs with the same key get the same decision."""
    return ",".join(sorted(job.excluded)) + job.spec.model_dump_json(include=set(_ROUTING_FIELDS))


@dataclass
class _Mail:
    kind: Event | str
    payload: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    #: What the handler concluded, for a waiting caller (cancel, acknowledge).
    error: DispatcherError | None = None


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
    ) -> None:
        self._cache = cache
        self._store = store
        self._clusters = clusters
        self._policy = policy or RoutingPolicy()
        self._service = service or ServiceSettings()
        self._unreachable = dict(unreachable or {})
        self._clock = clock
        self._fence = fence
        self._draw = draw
        self._on_fenced = on_fenced
        # Tests pass a runner they drive themselves (``# None for production``).
        self._own_runner = ThreadRunner() if runner is None else None
        self._runner: Runner = runner or self._own_runner  # type: ignore[assignment]
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # a job changed (long polls)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._jobs: dict[str, Job] = {}
        self._submitting: set[str] = set()
        self._mailboxes: dict[str, deque[_Mail]] = {}
        self._draining: set[str] = set()
        self._delayed: list[tuple[float, str, _Mail]] = []
        self._down_since: dict[str, float] = {}
        self._stale_seen: set[tuple[str, str]] = set()  # (cluster, pod) overlaps counted
        self._fenced = False
        # Only a dispatcher that rebuilt its jobs (the leader) judges pods; a follower's
        # empty job table must not make every pod look like an orphan.
        self._active = False
        self._thread: threading.Thread | None = None
        cache.add_listener(self._on_event)

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
        return self._fenced

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set() and not self._fenced:
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
        if self._fenced:
            return
        now = self._clock()
        self._check_timers(now)
        self._route_queued(now)
        self._publish()

    # ----- submission -----------------------------------------------------------------
    def submit(self, spec: TaskSpec) -> tuple[dict[str, Any], bool]:
        """Accept a validated task; returns (job view, created). Same key -> same job."""
        job_id = job_id_for(spec.idempotency_key)
        with self._lock:
            # A concurrent submission of the same key finishes first; then it is a duplicate.
            while job_id in self._submitting:
                self._changed.wait()
            existing = self._jobs.get(job_id)
            if existing is not None:
                return self._duplicate(existing, spec), False
            self._submitting.add(job_id)
        try:
            job = Job(
                id=job_id,
                spec=spec,
                submitted_at=self._clock(),
                idempotency_key=spec.idempotency_key,
            )
            decision = self._route(job, self._cache.snapshot())
            job = replace(job, reason=decision.message())
            if decision.verdict is Verdict.REJECT:
                job = replace(
                    job,
                    state=State.REJECTED,
                    message=job.reason,
                    finished_at=job.submitted_at,
                )
            # The record exists before any pod: a restart (or the next leader) finds it.
            fence = self._current_fence()
            try:
                version = self._store.create(job.to_record(), fence)
                metrics.RECORD_WRITES.labels(verb="create", outcome="ok").inc()
            except StaleRecord:
                # Created by an earlier leader (or replica) a moment ago: the same job.
                stored = self._store.get(job_id)
                if stored is None:
                    raise
                existing = Job.from_record(stored.record, stored.version)
                with self._lock:
                    self._jobs.setdefault(job_id, existing)
                return self._duplicate(existing, spec), False
            except Fenced:
                self._lost_fence("submit")
                raise
            job = replace(job, version=version)
            with self._lock:
                self._jobs[job_id] = job
        finally:
            with self._lock:
                self._submitting.discard(job_id)
                self._changed.notify_all()
        if job.state is State.REJECTED:
            metrics.SUBMISSIONS.labels(outcome="rejected").inc()
            metrics.JOBS_FINISHED.labels(cluster="", outcome="rejected", failure_class="").inc()
            log.info("job.rejected", job_id=job_id, reason=job.reason)
        else:
            metrics.SUBMISSIONS.labels(outcome="accepted").inc()
            log.info("job.submitted", job_id=job_id, name=spec.name)
            self.wake()
        return job.view(), True

    def _duplicate(self, existing: Job, spec: TaskSpec) -> dict[str, Any]:
        if existing.spec != spec:
            metrics.SUBMISSIONS.labels(outcome="conflict").inc()
            raise Conflict(
                f"idempotency key {spec.idempotency_key!r} was used for a different task",
                job_id=existing.id,
            )
        metrics.SUBMISSIONS.labels(outcome="duplicate").inc()
        return existing.view()

    def _current_fence(self) -> Fence:
        fence = None if self._fenced else self._fence()
        if fence is None:
            self._lost_fence("no current leader term")
            raise Fenced("this replica does not hold the leader lease; retry")
        return fence

    def explain(self, spec: TaskSpec) -> Decision:
        """Route without launching (the API's dry run)."""
        return route(spec, self._cache.snapshot(), self._policy)

    def _route(self, job: Job, snapshot: Snapshot) -> Decision:
        started = time.perf_counter()
        decision = route(job.spec, snapshot, self._policy)
        if job.excluded and decision.cluster in job.excluded:
            # A job that moved away prefers any other cluster; if none can take it now,
            # it may go back (``max_attempts`` stops ping-pong), else it waits.
            others = Snapshot.of(c for c in snapshot.clusters if c.name not in job.excluded)
            elsewhere = route(job.spec, others, self._policy)
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

    # ----- reads ----------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._job(job_id).view()

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", job_id=job_id)
        return job

    def find(self, idempotency_key: str) -> dict[str, Any]:
        return self.get(job_id_for(idempotency_key))

    def list(
        self, *, state: str | None = None, cluster: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: (j.submitted_at, j.id))
            views = [
                j.view()
                for j in jobs
                if (state is None or j.state.value == state)
                and (cluster is None or j.cluster == cluster)
            ]
        return views[:limit]

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Block until the job has finished or ``timeout`` passed (long poll)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            job = self._job(job_id)
            while not job.state.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(timeout=remaining)
                job = self._jobs.get(job_id, job)
            return job.view()

    def logs(
        self, job_id: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> Iterator[str]:
        with self._lock:
            job = self._job(job_id)
        attempt = job.attempt
        if attempt is None:
            raise Conflict(f"job {job_id} has no pod yet ({job.state.value})", job_id=job_id)
        return self._cache.connection(attempt.cluster).pod_logs(
            attempt.namespace, attempt.pod, CONTAINER_NAME, follow, None, tail_lines
        )

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            counts: dict[tuple[str, str], int] = {}
            for job in self._jobs.values():
                key = (job.state.value, job.cluster or "")
                counts[key] = counts.get(key, 0) + 1
            return counts

    # ----- client actions -------------------------------------------------------------
    def request_cancel(self, job_id: str) -> threading.Event:
        """Post a cancel; the returned event is set once it was handled (record written)."""
        with self._lock:
            self._job(job_id)
        return self._post(job_id, _Mail(Event.CANCEL)).done

    def cancel(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Cancel; answer once the record says cancelling, or cancelled if the pod went
        within ``cancel_answer_wait_seconds`` (or the job had already finished)."""
        with self._lock:
            self._job(job_id)
        mail = self._post(job_id, _Mail(Event.CANCEL))
        if not mail.done.wait(timeout):
            raise StoreError(f"cancel of {job_id} not recorded within {timeout:.0f}s; retry")
        if mail.error is not None:
            raise mail.error
        # Usually the pod is gone a moment later; a long grace period answers "cancelling".
        return self.wait(job_id, timeout=self._service.cancel_answer_wait_seconds)

    def request_acknowledge(self, job_id: str) -> threading.Event:
        with self._lock:
            job = self._job(job_id)
            if not job.state.finished:
                raise Conflict(f"job {job_id} is {job.state.value}, not finished", job_id=job_id)
        return self._post(job_id, _Mail(Event.FORGET)).done

    def acknowledge(self, job_id: str, timeout: float = 30.0) -> None:
        """The client has read the outcome: forget the job (its pod and record go)."""
        done = self.request_acknowledge(job_id)
        if not done.wait(timeout):
            raise StoreError(f"acknowledgement of {job_id} not recorded in {timeout:.0f}s")

    # ----- routing ----------------------------------------------------------------------
    def _route_queued(self, now: float) -> None:
        # 1. Heads: queued jobs with nothing in their mailbox, by priority, then age.
        with self._lock:
            heads = sorted(
                (
                    j
                    for j in self._jobs.values()
                    if j.state is State.QUEUED
                    and j.not_before <= now
                    and j.id not in self._draining
                    and not self._mailboxes.get(j.id)
                ),
                key=lambda j: (-j.spec.requirements.priority, j.submitted_at, j.id),
            )
        if not heads:
            return
        # 2. Snapshot of every cluster, with the pods we assumed.
        snapshot = self._cache.snapshot()
        # Jobs that ask for the same thing get the same answer until a placement changes
        # the snapshot: a long queue of alike jobs costs one decision.
        waiting: dict[str, Decision] = {}
        for job in heads:
            # 3. Route.
            shape = _routing_shape(job)
            decision = waiting.get(shape) or self._route(job, snapshot)
            if decision.verdict is Verdict.REJECT:
                self._post(job.id, _Mail(Event.REJECTED, {"reason": decision.message()}))
                continue
            if decision.verdict is Verdict.WAIT or decision.placement is None:
                waiting[shape] = decision
                with self._lock:
                    current = self._jobs.get(job.id)
                    if current is job:  # the reason is for readers; written with the next change
                        self._jobs[job.id] = replace(job, reason=decision.message())
                continue
            waiting.clear()
            # 4. Assume the placement, so the next decision sees it taken; the job's
            # mailbox writes the attempt ahead and then creates the pod.
            attempt_no = job.attempts
            manifest = build_pod(
                job.spec,
                decision.placement,
                job_id=job.id,
                attempt=attempt_no,
                submitted_at=datetime.fromtimestamp(job.submitted_at, UTC),
            )
            attempt = Attempt(
                attempt_no,
                decision.placement.cluster,
                manifest["metadata"]["name"],
                manifest["metadata"]["namespace"],
                now,
            )
            self._cache.assume(attempt.cluster, manifest)
            self._post(
                job.id,
                _Mail(
                    Event.PLACED,
                    {"attempt": attempt, "manifest": manifest, "reason": decision.message()},
                ),
            )
            # Only a placement changes what the next decision must see.
            snapshot = self._cache.snapshot()

    # ----- mailboxes --------------------------------------------------------------------
    def _post(self, job_id: str, mail: _Mail) -> _Mail:
        with self._lock:
            self._mailboxes.setdefault(job_id, deque()).append(mail)
            if job_id in self._draining:
                return mail
            self._draining.add(job_id)
        self._runner.submit(lambda: self._drain(job_id))
        return mail

    def _post_later(self, job_id: str, mail: _Mail, delay: float) -> None:
        with self._lock:
            self._delayed.append((self._clock() + delay, job_id, mail))

    def _drain(self, job_id: str) -> None:
        try:
            self._drain_box(job_id)
        except BaseException:
            # Never leave a job marked as being drained by a task that is gone.
            with self._lock:
                self._draining.discard(job_id)
                again = bool(self._mailboxes.get(job_id))
            if again:
                self._post_later(job_id, _Mail(_RESOLVE), 1.0)
            raise

    def _drain_box(self, job_id: str) -> None:
        while True:
            with self._lock:
                box = self._mailboxes.get(job_id)
                if not box:
                    self._mailboxes.pop(job_id, None)
                    self._draining.discard(job_id)
                    return
                mail = box.popleft()
            try:
                self._handle(job_id, mail)
            except Exception:
                metrics.THREAD_RESTARTS.labels(thread="job-mailbox").inc()
                log.exception("job.event_failed", job_id=job_id, on=str(mail.kind))
                self._retry(job_id, mail)
            finally:
                mail.done.set()

    def _retry(self, job_id: str, mail: _Mail) -> None:
        failures = int(mail.payload.get("_failures", 0)) + 1
        if failures > 20:
            log.error("job.event_dropped", job_id=job_id, on=str(mail.kind))
            return
        again = _Mail(mail.kind, {**mail.payload, "_failures": failures})
        self._post_later(job_id, again, backoff_delay(failures, cap=30.0, draw=self._draw()))

    # ----- the state machine, carried out -----------------------------------------------
    def _handle(self, job_id: str, mail: _Mail) -> None:
        if self._fenced:
            return
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            self._orphaned_mail(mail)
            return
        if mail.kind == _RESOLVE:
            self._resolve(job)
            return
        event = self._refine(job, Event(mail.kind), mail.payload)
        step = transition(job.state, event)
        if step is None:
            metrics.ILLEGAL_TRANSITIONS.labels(state=job.state.value, event=event.value).inc()
            log.info("job.event_ignored", job_id=job_id, state=job.state.value, on=event.value)
            self._orphaned_mail(mail)
            return
        new = self._next(job, step.target, event, mail.payload, step.actions)
        # ``WRITE_RECORD`` is always the first action with an effect (END_ATTEMPT is folded
        # into ``_next``): nothing happens unless the record says so first.
        if Action.WRITE_RECORD in step.actions:
            written = self._write(job, new, mail)
            if written is None:
                self._orphaned_mail(mail)
                return
            new = written
        else:
            new = self._commit(new)
        for action in step.actions:
            if action not in (Action.WRITE_RECORD, Action.END_ATTEMPT):
                new = self._act(new, action, mail.payload)

    def _orphaned_mail(self, mail: _Mail) -> None:
        # A placement that will not be launched gives its assumed room back.
        if mail.kind is Event.PLACED:
            attempt: Attempt = mail.payload["attempt"]
            self._cache.forget(attempt.cluster, attempt.pod)

    def _refine(self, job: Job, event: Event, payload: dict[str, Any]) -> Event:
        """Events whose meaning depends on what is left: attempts, create retries."""
        gone = event in (Event.POD_DELETED, Event.POD_ABSENT)
        if job.state is State.MOVING and gone:
            event = Event.RELEASE
        spent = job.create_failures > self._service.launch_retries
        if job.state is State.LAUNCHING and event is Event.POD_ABSENT and spent:
            payload.setdefault(
                "reason", f"create failed {job.create_failures} times; trying elsewhere"
            )
            event = Event.RELEASE
        if event is Event.RELEASE and job.attempts >= self._service.max_attempts:
            why = payload.get("reason") or "no attempt left"
            payload["message"] = f"gave up after {job.attempts} attempts; last: {why}"
            payload["failure"] = FailureClass.UNSCHEDULABLE
            return Event.GIVE_UP
        return event

    def _next(
        self,
        job: Job,
        target: State,
        event: Event,
        payload: dict[str, Any],
        actions: tuple[Action, ...],
    ) -> Job:
        """The job after ``event``: the state machine's target and the event's facts."""
        now = self._clock()
        new = replace(job, state=target)
        outcome = payload.get("observation")
        if payload.get("uid") and new.attempt is not None and new.attempt.uid is None:
            new = replace(new, attempt=replace(new.attempt, uid=payload["uid"]))
        if event is Event.PLACED:
            new = replace(
                new,
                attempt=payload["attempt"],
                reason=payload.get("reason", new.reason),
                create_failures=0,
                resolve_at=None,
                unschedulable_since=None,
                waiting_since=None,
                scheduled_at=None,
            )
        elif event is Event.CREATED:
            new = replace(new, create_failures=0, resolve_at=None)
        elif event is Event.CREATE_UNCERTAIN:
            failures = job.create_failures + 1
            delay = max(
                float(payload.get("retry_after") or 0.0),
                backoff_delay(failures, base=1.0, cap=30.0, draw=self._draw()),
            )
            new = replace(
                new, create_failures=failures, resolve_at=now + delay, reason=payload["message"]
            )
        elif event is Event.NOTE:
            new = new.with_condition(
                payload["type"], payload["status"], payload["reason"], payload["message"], now
            )
        elif event is Event.POD_ABSENT and target is State.LAUNCHING:
            new = replace(new, resolve_at=None)
        elif isinstance(outcome, Observation) and target not in _UNRESOLVED - {State.LAUNCHING}:
            # While cancelling or moving, the pod's last words are not the job's story.
            new = self._observed(new, outcome, now)
        if Action.END_ATTEMPT in actions and job.attempt is not None:
            # A move ends with the pod's disappearance: the reason is why it moved.
            moved = job.reason if job.state is State.MOVING else None
            why = payload.get("reason") or payload.get("message") or moved or event.value
            ended = replace(job.attempt, ended=why, abandoned=event is Event.ABANDON)
            new = replace(
                new,
                attempt=None,
                history=(*job.history, ended),
                excluded=new.excluded | {job.attempt.cluster},
                reason=f"moved away from {job.attempt.cluster}: {why}",
                scheduled_at=None,
                unschedulable_since=None,
                waiting_since=None,
                resolve_at=None,
                create_failures=0,
            )
        if Action.DELETE_POD in actions and not target.finished:
            # The pod is gone when the watch says so; if that event is lost, a read says so.
            grace = float(self._service.cancel_grace_seconds)
            new = replace(new, resolve_at=now + grace + _RESOLVE_SAFETY_SECONDS)
        if target is not job.state:
            new = self._entered(new, old=job, target=target, event=event, payload=payload, now=now)
        return new

    def _observed(self, job: Job, observation: Observation, now: float) -> Job:
        outcome = observation.outcome
        new = job
        if observation.bound and job.scheduled_at is None:
            new = replace(new, scheduled_at=now)
        if outcome.phase is JobPhase.PENDING:
            unschedulable = outcome.failure is FailureClass.UNSCHEDULABLE
            new = replace(
                new,
                unschedulable_since=(new.unschedulable_since or now) if unschedulable else None,
                # startup_timeout_seconds counts from the bind (``Outcome.starting``).
                waiting_since=(new.waiting_since or now) if outcome.starting else None,
                # While pending, ``failure`` says what the pod is stuck on (if anything).
                failure=outcome.failure,
                reason=outcome.message or new.reason,
            )
        elif outcome.phase is JobPhase.RUNNING:
            new = replace(new, failure=None)
        if outcome.phase.finished:
            new = replace(new, exit_code=outcome.exit_code, result=outcome.result)
        return new

    def _entered(
        self,
        new: Job,
        *,
        old: Job,
        target: State,
        event: Event,
        payload: dict[str, Any],
        now: float,
    ) -> Job:
        """Facts that come with entering ``target``: messages, times, failure classes."""
        observation = payload.get("observation")
        outcome = observation.outcome if isinstance(observation, Observation) else None
        if target is State.RUNNING:
            new = replace(new, running_at=now, unschedulable_since=None, waiting_since=None)
        elif target is State.REJECTED:
            reason = payload.get("reason", new.reason)
            new = replace(new, reason=reason, message=reason)
        elif target is State.SUCCEEDED and outcome is not None:
            new = replace(new, failure=outcome.failure, message=outcome.message)
        elif target is State.FAILED:
            if outcome is not None and event is Event.POD_FAILED:
                failure, message = outcome.failure, outcome.message
            elif event in (Event.POD_DELETED, Event.POD_ABSENT) and old.attempt is not None:
                failure = FailureClass.NODE_LOST
                message = (
                    f"pod {old.attempt.pod} on {old.attempt.cluster} was deleted before it finished"
                )
            else:
                failure = payload.get("failure") or FailureClass.UNKNOWN
                message = payload.get("message") or payload.get("reason") or event.value
            new = replace(new, failure=failure, message=message)
        elif target is State.CANCELLING:
            new = replace(new, reason="cancel requested; deleting the pod")
        elif target is State.CANCELLED:
            launched = old.attempt is not None
            new = replace(
                new, message="cancelled" if launched else "cancelled before it was launched"
            )
        elif target is State.MOVING:
            new = replace(new, reason=payload.get("reason", "moving"))
        if target.finished:
            new = replace(new, finished_at=now, resolve_at=None)
        return new

    def _write(self, old: Job, new: Job, mail: _Mail) -> Job | None:
        """Write ``new``'s record over ``old``'s version; the committed job or ``None``.

        ``None`` means nothing may follow: the event is decided again later on the record
        as it is now (stale), retried after a backoff (store error), or this replica has
        stopped (fenced).
        """
        fence = None if self._fenced else self._fence()
        if fence is None:
            self._lost_fence("lease not renewed")
            mail.error = Fenced("this replica no longer holds the leader lease")
            return None
        try:
            version = self._store.update(new.to_record(), old.version, fence)
        except Fenced as exc:
            metrics.RECORD_WRITES.labels(verb="update", outcome="fenced").inc()
            self._lost_fence(str(exc))
            mail.error = exc
            return None
        except StaleRecord:
            metrics.RECORD_WRITES.labels(verb="update", outcome="stale").inc()
            self._reread(old, mail)
            return None
        except StoreError as exc:
            metrics.RECORD_WRITES.labels(verb="update", outcome="error").inc()
            log.warning("job.record_write_failed", job_id=old.id, error=str(exc))
            self._retry(old.id, mail)
            return None
        metrics.RECORD_WRITES.labels(verb="update", outcome="ok").inc()
        written = replace(new, version=version)
        if written.state is State.QUEUED:
            self._wake.set()  # route it now, not at the next timer turn
        if new.state is not old.state:
            self._finished_metrics(old, written)
            log.info(
                "job.transition",
                job_id=old.id,
                state=written.state.value,
                previous=old.state.value,
                cluster=written.cluster or "",
                attempt=written.attempt.number if written.attempt else None,
            )
        return self._commit(written)

    def _reread(self, old: Job, mail: _Mail) -> None:
        """Someone else wrote the record: take what is there and decide the event again."""
        try:
            stored = self._store.get(old.id)
        except StoreError as exc:
            log.warning("job.record_reread_failed", job_id=old.id, error=str(exc))
            self._retry(old.id, mail)
            return
        with self._lock:
            if stored is None:
                self._jobs.pop(old.id, None)
                self._changed.notify_all()
                return
            fresh = Job.from_record(stored.record, stored.version)
            self._jobs[old.id] = fresh
        log.info("job.record_changed_elsewhere", job_id=old.id, state=fresh.state.value)
        self._post(old.id, _Mail(mail.kind, mail.payload))

    def _touch(self, job_id: str, **fields: Any) -> None:
        """Change this process's own bookkeeping (timers) of the job as it is now; never
        a persisted field, so no record write is owed."""
        with self._lock:
            current = self._jobs.get(job_id)
            if current is not None:
                self._jobs[job_id] = replace(current, **fields)

    def _commit(self, job: Job) -> Job:
        with self._lock:
            if job.id in self._jobs:
                self._jobs[job.id] = job
            self._changed.notify_all()
        return job

    def _lost_fence(self, why: str) -> None:
        if self._fenced:
            return
        self._fenced = True
        log.error("dispatch.fenced", why=why)
        if self._on_fenced is not None:
            self._on_fenced()

    def _finished_metrics(self, old: Job, new: Job) -> None:
        if new.state is State.RUNNING:
            metrics.SUBMIT_TO_RUNNING_SECONDS.labels(cluster=new.cluster or "").observe(
                max(0.0, self._clock() - new.submitted_at)
            )
        if new.state is State.LAUNCHING:
            metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, self._clock() - new.submitted_at))
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
            message=new.message,
        )

    # ----- actions --------------------------------------------------------------------
    def _act(self, job: Job, action: Action, payload: dict[str, Any]) -> Job:
        """Carry out one side effect; returns the job as it is afterwards."""
        attempt = job.attempt
        if action is Action.CREATE_POD and attempt is not None:
            self._create(job, attempt, payload.get("manifest"))
        elif action is Action.DELETE_POD and attempt is not None:
            grace = 0 if job.state.finished else self._service.cancel_grace_seconds
            self._delete(job, attempt, grace)
        elif action is Action.CLEANUP_POD and attempt is not None:
            return self._cleanup(job, attempt)
        elif action is Action.DELETE_RECORD:
            self._forget(job)
        # RESOLVE_LATER: ``_next`` set ``resolve_at``; the timers post the read.
        return job

    def _manifest(self, job: Job, attempt: Attempt) -> dict[str, Any] | None:
        """The attempt's manifest again (after a restart): same cluster, same name."""
        state = self._cache.snapshot().cluster(attempt.cluster)
        if state is None:
            return None
        manifest = build_pod(
            job.spec,
            placement_for(job.spec, state),
            job_id=job.id,
            attempt=attempt.number,
            submitted_at=datetime.fromtimestamp(job.submitted_at, UTC),
        )
        return manifest if manifest["metadata"]["name"] == attempt.pod else None

    def _create(self, job: Job, attempt: Attempt, manifest: dict[str, Any] | None) -> None:
        manifest = manifest or self._manifest(job, attempt)
        if manifest is None:
            self._post(
                job.id,
                _Mail(Event.CREATE_UNCERTAIN, {"message": f"{attempt.cluster} is not known yet"}),
            )
            return
        try:
            pod = self._cache.connection(attempt.cluster).create_pod(attempt.namespace, manifest)
        except ApiError as exc:
            if exc.kind is ErrorKind.CONFLICT:  # the name exists: this attempt's pod
                self._post(job.id, _Mail(Event.CREATED, {}))
                return
            if exc.kind is ErrorKind.PERMANENT:
                metrics.LAUNCH_ERRORS.labels(cluster=attempt.cluster, kind="refused").inc()
                self._cache.forget(attempt.cluster, attempt.pod)
                self._post(
                    job.id,
                    _Mail(
                        Event.CREATE_REFUSED,
                        {
                            "failure": FailureClass.LAUNCH_REFUSED,
                            "message": f"the API server of {attempt.cluster} refused the "
                            f"pod ({exc.status}): {exc}",
                        },
                    ),
                )
                return
            self._uncertain(job, attempt, exc, retry_after=exc.retry_after)
            return
        except DispatcherError as exc:
            self._uncertain(job, attempt, exc, retry_after=None)
            return
        uid = (pod.get("metadata") or {}).get("uid")
        log.info("job.launched", job_id=job.id, cluster=attempt.cluster, pod=attempt.pod)
        self._post(job.id, _Mail(Event.CREATED, {"uid": uid}))

    def _uncertain(
        self, job: Job, attempt: Attempt, exc: DispatcherError, *, retry_after: float | None
    ) -> None:
        metrics.LAUNCH_ERRORS.labels(cluster=attempt.cluster, kind="uncertain").inc()
        log.warning("job.create_uncertain", job_id=job.id, cluster=attempt.cluster, error=str(exc))
        self._post(
            job.id,
            _Mail(
                Event.CREATE_UNCERTAIN,
                {"message": f"create on {attempt.cluster}: {exc}", "retry_after": retry_after},
            ),
        )

    def _delete(self, job: Job, attempt: Attempt, grace: int | None) -> None:
        try:
            self._cache.connection(attempt.cluster).delete_pod(
                attempt.namespace, attempt.pod, grace
            )
        except ClusterError as exc:
            # Not known to be gone: ``resolve_at`` reads it again and deletes what is there.
            log.warning("pod.delete_failed", job_id=job.id, pod=attempt.pod, error=str(exc))

    def _cleanup(self, job: Job, attempt: Attempt) -> Job:
        self._cache.forget(attempt.cluster, attempt.pod)
        if not self._deletes_pod(job):
            return self._commit(replace(job, cleaned=True))
        linger = self._service.finished_pod_linger_seconds
        if linger <= 0:
            self._delete(job, attempt, 0)
            return self._commit(replace(job, cleaned=True))
        # The log goes with the pod: leave a short task's log readable for a while (or
        # until the client acknowledges the job).
        return self._commit(replace(job, cleanup_due=self._clock() + linger))

    def _forget(self, job: Job) -> None:
        """Acknowledged or expired: the pod first (if it lingers), then the record."""
        attempt = job.attempt
        if attempt is not None and not job.cleaned and self._deletes_pod(job):
            self._delete(job, attempt, 0)
        fence = None if self._fenced else self._fence()
        if fence is None:
            self._lost_fence("lease not renewed")
            return
        try:
            self._store.delete(job.id, fence)
            metrics.RECORD_WRITES.labels(verb="delete", outcome="ok").inc()
        except Fenced as exc:
            self._lost_fence(str(exc))
            return
        except StoreError as exc:
            metrics.RECORD_WRITES.labels(verb="delete", outcome="error").inc()
            log.warning("job.record_delete_failed", job_id=job.id, error=str(exc))
            self._post_later(job.id, _Mail(Event.FORGET), 5.0)
            return
        with self._lock:
            self._jobs.pop(job.id, None)
            self._changed.notify_all()

    @staticmethod
    def _deletes_pod(job: Job) -> bool:
        action = job.spec.on_finish_action
        if action is OnFinishAction.KEEP_POD:
            return False
        return not (
            action is OnFinishAction.DELETE_SUCCEEDED_POD and job.state is not State.SUCCEEDED
        )

    def _resolve(self, job: Job) -> None:
        """Read the attempt's pod and feed what is there: the cure for every uncertainty."""
        attempt = job.attempt
        self._touch(job.id, resolve_at=None)
        if attempt is None or job.state not in LIVE:
            return
        if self._down(attempt.cluster):
            # Unreachable: nothing to read; the informers say when it is back.
            self._touch(job.id, resolve_at=self._clock() + _RESOLVE_SAFETY_SECONDS)
            return
        try:
            pod = self._cache.connection(attempt.cluster).read_pod(attempt.namespace, attempt.pod)
        except DispatcherError as exc:
            log.info("job.resolve_deferred", job_id=job.id, cluster=attempt.cluster, error=str(exc))
            failures = job.create_failures + 1
            delay = backoff_delay(failures, base=2.0, cap=60.0, draw=self._draw())
            with self._lock:
                current = self._jobs.get(job.id)
                if current is not None:
                    self._jobs[job.id] = replace(current, resolve_at=self._clock() + delay)
            return
        if pod is None:
            self._post(job.id, _Mail(Event.POD_ABSENT))
            return
        self._feed(job.id, pod, seen_deleted=False)
        with self._lock:
            current = self._jobs.get(job.id)
            if current is not None and current.state in _UNRESOLVED and current.resolve_at is None:
                self._jobs[job.id] = replace(
                    current, resolve_at=self._clock() + _RESOLVE_SAFETY_SECONDS
                )

    def _feed(self, job_id: str, pod: dict[str, Any], *, seen_deleted: bool) -> None:
        if seen_deleted:
            self._post(job_id, _Mail(Event.POD_DELETED))
            return
        observation = observe(pod)
        uid = (pod.get("metadata") or {}).get("uid")
        self._post(job_id, _Mail(observation.event, {"observation": observation, "uid": uid}))

    # ----- informer events ----------------------------------------------------------------
    def _on_event(
        self, cluster: str, kind: str, event_type: str, obj: dict[str, Any] | None
    ) -> None:
        if not self._active or self._fenced:
            return
        if kind == "pod" and obj is not None:
            self._on_pod(cluster, event_type, obj)
        elif kind == "health":
            self._on_health(cluster)
        # Every kind of event (pod, node, capacity, health) may free room: let queued
        # jobs try again.
        self._wake.set()

    def _on_health(self, cluster: str) -> None:
        health = self._cache.health(cluster)
        with self._lock:
            if health is Health.DOWN:
                self._down_since.setdefault(cluster, self._clock())
                return
            back = self._down_since.pop(cluster, None) is not None
        if back:
            # Back: first of all, attempts that are not their job's current one go.
            self._sweep(cluster)

    def _down(self, cluster: str) -> bool:
        with self._lock:
            return cluster in self._down_since

    def _on_pod(self, cluster: str, event_type: str, pod: dict[str, Any]) -> None:
        identity = pod_identity(pod)
        if identity is None:
            return
        with self._lock:
            job = self._jobs.get(identity.job_id)
        if job is None:
            return  # another dispatcher's, or acknowledged (its pod was deleted first)
        current = job.attempt
        if current is None or (current.number, current.cluster) != (identity.attempt, cluster):
            if event_type != "DELETED":
                self._stale(job, cluster, pod)
            else:
                self._stale_seen.discard((cluster, identity.name))
            return
        if job.state.finished:
            if event_type != "DELETED" and alive(pod):
                # Alive after its job ended (a create answered late, a cancelled job's or a
                # timed-out job's pod): it must not run, whatever on_finish_action keeps.
                self._runner.submit(
                    lambda: self._delete_stale(cluster, identity.namespace, identity.name)
                )
            return
        self._feed(identity.job_id, pod, seen_deleted=event_type == "DELETED")

    def _stale(self, job: Job, cluster: str, pod: dict[str, Any]) -> None:
        """A pod of another attempt: the task must not run twice. Counted if it overlapped."""
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name", ""))
        key = (cluster, name)
        if (
            alive(pod)
            and job.state in (State.RUNNING, State.PENDING)
            and key not in self._stale_seen
        ):
            self._stale_seen.add(key)
            metrics.OVERLAPPING_ATTEMPTS.labels(cluster=cluster).inc()
            log.warning("job.overlapping_attempt", job_id=job.id, cluster=cluster, pod=name)
        self._runner.submit(
            lambda: self._delete_stale(cluster, str(metadata.get("namespace", "")), name)
        )

    def _delete_stale(self, cluster: str, namespace: str, name: str) -> None:
        try:
            self._cache.connection(cluster).delete_pod(namespace, name, 0)
            log.info("pod.stale_deleted", cluster=cluster, pod=name)
        except ClusterError as exc:
            log.warning("pod.stale_delete_failed", cluster=cluster, pod=name, error=str(exc))

    def _sweep(self, cluster: str) -> None:
        """Every managed pod of ``cluster`` that is not its job's current attempt goes."""
        if not self._cache.synced(cluster):
            return
        pods = self._cache.managed_pods(cluster)
        listed = {(i.job_id, i.attempt) for i in map(pod_identity, pods) if i is not None}
        with self._lock:
            unseen = [
                j.id
                for j in self._jobs.values()
                if j.state in LIVE
                and j.attempt is not None
                and j.attempt.cluster == cluster
                and (j.id, j.attempt.number) not in listed
            ]
        # A pod that went while nobody watched sends no event: read what is there.
        for job_id in unseen:
            self._post(job_id, _Mail(_RESOLVE))
        for pod in pods:
            identity = pod_identity(pod)
            if identity is None:
                continue
            with self._lock:
                job = self._jobs.get(identity.job_id)
            current = job.attempt if job is not None else None
            if job is None:
                continue
            if current is None or (current.number, current.cluster) != (identity.attempt, cluster):
                self._stale(job, cluster, pod)

    # ----- timers ---------------------------------------------------------------------
    def _check_timers(self, now: float) -> None:
        with self._lock:
            due = [(job_id, mail) for at, job_id, mail in self._delayed if at <= now]
            self._delayed = [d for d in self._delayed if d[0] > now]
            jobs = list(self._jobs.values())
            down = dict(self._down_since)
        for job_id, mail in due:
            self._post(job_id, mail)
        for job in jobs:
            if job.state.finished:
                self._finished_timers(job, now)
            else:
                self._live_timers(job, now, down)

    def _finished_timers(self, job: Job, now: float) -> None:
        if job.cleanup_due is not None and now >= job.cleanup_due:
            self._touch(job.id, cleanup_due=None, cleaned=True)
            self._post(job.id, _Mail(Event.LINGER_DUE))
        if job.finished_at and now - job.finished_at > self._service.finished_ttl_seconds:
            self._post(job.id, _Mail(Event.FORGET))

    def _live_timers(self, job: Job, now: float, down: Mapping[str, float]) -> None:
        attempt = job.attempt
        if attempt is None or job.id in self._draining:
            return
        if job.resolve_at is not None and now >= job.resolve_at:
            self._touch(job.id, resolve_at=None)
            self._post(job.id, _Mail(_RESOLVE))
            return
        if job.state in _UNRESOLVED and job.resolve_at is None:
            self._touch(job.id, resolve_at=now + _RESOLVE_SAFETY_SECONDS)
        since = down.get(attempt.cluster)
        noted = job.condition(UNREACHABLE)
        if (since is not None) != (noted is not None and noted.status == "True"):
            self._post(job.id, _Mail(Event.NOTE, _unreachable_condition(attempt, since, now)))
        if since is not None:
            policy = self._unreachable.get(attempt.cluster) or UnreachablePolicy()
            relaunch = policy.action == "relaunch" and job.attempts < self._service.max_attempts
            if relaunch and now - since >= policy.relaunch_after_seconds:
                metrics.FAILOVERS.labels(from_cluster=attempt.cluster, reason="cluster_down").inc()
                self._post(
                    job.id,
                    _Mail(
                        Event.ABANDON,
                        {
                            "reason": f"cluster {attempt.cluster} unreachable for "
                            f"{now - since:.0f}s (policy: relaunch after "
                            f"{policy.relaunch_after_seconds:.0f}s)"
                        },
                    ),
                )
            return
        timeout = job.spec.schedule_timeout_seconds or self._service.schedule_timeout_seconds
        if (
            job.state is State.PENDING
            and job.unschedulable_since is not None
            and now - job.unschedulable_since >= timeout
        ):
            metrics.FAILOVERS.labels(from_cluster=attempt.cluster, reason="unschedulable").inc()
            self._post(
                job.id,
                _Mail(
                    Event.MOVE,
                    {"reason": f"unschedulable on {attempt.cluster} for {timeout:.0f}s"},
                ),
            )
            return
        startup = job.spec.startup_timeout_seconds
        if (
            job.state is State.PENDING
            and job.waiting_since is not None
            and now - job.waiting_since >= startup
        ):
            self._post(
                job.id,
                _Mail(
                    Event.FAIL,
                    {
                        "failure": job.failure or FailureClass.DEADLINE_EXCEEDED,
                        "message": f"container did not start within {startup}s of being "
                        "scheduled" + (f": {job.reason}" if job.reason else ""),
                    },
                ),
            )

    def _publish(self) -> None:
        counts = self.counts()
        metrics.record_jobs((phase, cluster, n) for (phase, cluster), n in counts.items())
        metrics.QUEUE_DEPTH.set(sum(n for (phase, _), n in counts.items() if phase == "queued"))
        with self._lock:
            queued = [j.submitted_at for j in self._jobs.values() if j.state is State.QUEUED]
        # The wait histogram only counts jobs that left the queue; a stuck queue shows here.
        metrics.QUEUE_OLDEST_SUBMISSION.set(min(queued, default=0.0))

    # ----- restart ----------------------------------------------------------------------
    def reattach(self) -> None:
        """Rebuild jobs from the records, then judge every managed pod against them.

        Records come first (a pod's job always has a record before the pod exists), then,
        per listed cluster: pods of attempts that are not their job's current one are
        deleted before anything else is done for that job; the current attempt's pod is
        observed; a live attempt whose pod is absent from a listed cluster is resolved by
        the state machine (a create that never happened is sent again under the same
        name; a pod deleted while we were down fails its job, never runs it twice).
        """
        stored = self._store.list()
        with self._lock:
            for item in stored:
                try:
                    job = Job.from_record(item.record, item.version)
                except (KeyError, ValueError, TypeError) as exc:
                    log.error("job.record_unreadable", job_id=item.record.get("id"), error=str(exc))
                    continue
                self._jobs[job.id] = job
        adopted = 0
        for cluster in self._clusters:
            if not self._cache.synced(cluster):
                # Its pods are unknown: its jobs wait for it to be seen again.
                log.warning("reattach.cluster_unavailable", cluster=cluster)
                with self._lock:
                    self._down_since.setdefault(cluster, self._clock())
                continue
            present: set[tuple[str, int]] = set()
            for pod in self._cache.managed_pods(cluster):
                identity = pod_identity(pod)
                if identity is None:
                    log.warning(
                        "reattach.pod_unreadable",
                        cluster=cluster,
                        pod=(pod.get("metadata") or {}).get("name"),
                    )
                    continue
                with self._lock:
                    owner = self._jobs.get(identity.job_id)
                if owner is None:
                    # Records are written before pods and deleted after them: a pod
                    # without one is left over from a crash between the two.
                    log.warning("reattach.orphan_deleted", cluster=cluster, pod=identity.name)
                    self._runner.submit(
                        functools.partial(
                            self._delete_stale, cluster, identity.namespace, identity.name
                        )
                    )
                    continue
                current = owner.attempt
                if current is None or (current.number, current.cluster) != (
                    identity.attempt,
                    cluster,
                ):
                    self._stale(owner, cluster, pod)
                    continue
                present.add((owner.id, identity.attempt))
                if owner.state.finished:
                    continue
                adopted += 1
                self._feed(owner.id, pod, seen_deleted=False)
            with self._lock:
                missing = [
                    j
                    for j in self._jobs.values()
                    if j.state in LIVE
                    and j.attempt is not None
                    and j.attempt.cluster == cluster
                    and (j.id, j.attempt.number) not in present
                ]
            for job in missing:
                self._post(job.id, _Mail(Event.POD_ABSENT))
        self._active = True
        log.info("reattach.done", jobs=len(self._jobs), pods_adopted=adopted)
        self._publish()
