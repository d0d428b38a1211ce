"""The dispatch cycle: queue -> snapshot -> route -> assume -> launch -> track -> finish.

``Dispatcher`` owns the jobs. One thread runs ``cycle()`` whenever something may have
changed (a submission, a capacity or health change seen by the informers, a timer); the
informers' pod events drive tracking, so no pod is ever polled. Clock, cache, cluster
connections and the job store are injected, so tests drive it directly.

Invariants kept here (each has an end-to-end test):
* one pod per job attempt: the pod name derives from the job id (itself derived from the
  idempotency key) and the attempt, so a re-submission or a restart can only adopt it;
* a job moves to another cluster only after its old pod is seen gone or its cluster is
  declared lost; stale attempts found later are deleted;
* every job is in the store before its pod exists, and its outcome stays there until
  acknowledged or expired.

I/O: through the injected cache, connections and store only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from dispatcher import metrics
from dispatcher.core import (
    ATTEMPT_LABEL,
    CONTAINER_NAME,
    IDEMPOTENCY_KEY_ANNOTATION,
    JOB_ID_LABEL,
    SUBMITTED_AT_ANNOTATION,
    TASK_SPEC_ANNOTATION,
    FailureClass,
    Health,
    JobPhase,
    OnFinishAction,
    RoutingPolicy,
    Snapshot,
    TaskSpec,
    Verdict,
    build_pod,
    classify_pod,
    route,
)
from dispatcher.core.routing import Decision
from dispatcher.dispatching.jobs import Attempt, Job, JobState, job_id_for
from dispatcher.dispatching.store import JobStore
from dispatcher.errors import ApiError, ClusterError, Conflict, DispatcherError, NotFound
from dispatcher.settings import ServiceSettings

log = structlog.get_logger("dispatcher.dispatching")


class Connection(Protocol):
    """What the dispatcher needs from one cluster (``dispatcher.clusters``)."""

    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]: ...
    def delete_pod(
        self, namespace: str, name: str, grace_period_seconds: int | None = None
    ) -> None: ...
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


def _record_failover(job: Job, attempt: Attempt, reason: str) -> None:
    metrics.FAILOVERS.labels(from_cluster=attempt.cluster, reason=reason).inc()
    log.warning("job.failover", job_id=job.id, cluster=attempt.cluster, reason=reason)


def _routing_shape(job: Job) -> str:
    """What routing looks at, as a key: jobs with the same key get the same decision."""
    return ",".join(sorted(job.excluded)) + job.spec.model_dump_json(include=set(_ROUTING_FIELDS))


class Dispatcher:
    def __init__(
        self,
        cache: Cache,
        store: JobStore,
        *,
        clusters: tuple[str, ...],
        policy: RoutingPolicy | None = None,
        service: ServiceSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._store = store
        self._clusters = clusters
        self._policy = policy or RoutingPolicy()
        self._service = service or ServiceSettings()
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # any job changed (long polls)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._jobs: dict[str, Job] = {}
        self._submitting: set[str] = set()
        self._down_since: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        # Pod deletions and creates run off the informer threads.
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dispatch-io")
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
        self._workers.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self._service.cycle_interval_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.cycle()
            except Exception:  # the loop must survive any one bad cycle
                log.exception("dispatch.cycle_failed")

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
                if existing.spec != spec:
                    metrics.SUBMISSIONS.labels(outcome="conflict").inc()
                    raise Conflict(
                        f"idempotency key {spec.idempotency_key!r} was used for a different task",
                        job_id=job_id,
                    )
                metrics.SUBMISSIONS.labels(outcome="duplicate").inc()
                return existing.view(), False
            self._submitting.add(job_id)
        # Routing and the record write happen outside the lock: submissions and the
        # dispatch cycle do not wait on each other's API calls.
        saved = False
        try:
            job = Job(
                id=job_id,
                spec=spec,
                submitted_at=self._clock(),
                idempotency_key=spec.idempotency_key,
            )
            decision = self._route(job, self._cache.snapshot())
            job.reason = decision.message()
            if decision.verdict is Verdict.REJECT:
                job.state = JobState.REJECTED
                job.message = job.reason
                job.finished_at = job.submitted_at
            # The record exists before any pod: a restart finds every job.
            self._store.save(job.to_record())
            saved = True
        finally:
            with self._lock:
                self._submitting.discard(job_id)
                if saved:
                    self._jobs[job_id] = job
                self._changed.notify_all()
        if job.state is JobState.REJECTED:
            metrics.SUBMISSIONS.labels(outcome="rejected").inc()
            metrics.JOBS_FINISHED.labels(cluster="", outcome="rejected", failure_class="").inc()
            log.info("job.rejected", job_id=job_id, reason=job.reason)
        else:
            metrics.SUBMISSIONS.labels(outcome="accepted").inc()
            log.info("job.submitted", job_id=job_id, name=spec.name)
            self.wake()
        return job.view(), True

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
    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._job(job_id)
            if job.state.finished:
                return job.view()
            job.cancel_requested = True
            if job.attempt is None:
                self._finish(job, JobState.CANCELLED, None, "cancelled before it was launched")
                return job.view()
            attempt = job.attempt
        self._delete_pod(attempt, self._service.cancel_grace_seconds)
        with self._lock:
            if not job.state.finished:
                self._finish(job, JobState.CANCELLED, None, "cancelled")
            return job.view()

    def acknowledge(self, job_id: str) -> None:
        """The client has read the outcome: forget the job (its record goes)."""
        with self._lock:
            job = self._job(job_id)
            if not job.state.finished:
                raise Conflict(f"job {job_id} is {job.state.value}, not finished", job_id=job_id)
            del self._jobs[job_id]
            self._cleanup_now(job)
            self._changed.notify_all()
        self._store.delete(job_id)

    # ----- the cycle ------------------------------------------------------------------
    def cycle(self) -> None:
        """One pass, in numbered steps."""
        now = self._clock()
        # 1. Heads: queued jobs by priority, then age.
        with self._lock:
            heads = sorted(
                (j for j in self._jobs.values() if j.state is JobState.QUEUED and j.moving is None),
                key=lambda j: (-j.spec.requirements.priority, j.submitted_at, j.id),
            )
            heads = [j for j in heads if j.not_before <= now]
        launches: list[tuple[Job, Attempt, dict[str, Any]]] = []
        if heads:
            # 2. Snapshot of every cluster, with the pods we assumed.
            snapshot = self._cache.snapshot()
            # Jobs that ask for the same thing get the same answer until a placement
            # changes the snapshot: a long queue of alike jobs costs one decision.
            waiting: dict[str, Decision] = {}
            for job in heads:
                # 3. Route.
                shape = _routing_shape(job)
                decision = waiting.get(shape) or self._route(job, snapshot)
                with self._lock:
                    if job.state is not JobState.QUEUED:
                        continue
                    job.reason = decision.message()
                    if decision.verdict is Verdict.REJECT:
                        self._finish(job, JobState.REJECTED, None, job.reason)
                        continue
                    if decision.verdict is Verdict.WAIT or decision.placement is None:
                        waiting[shape] = decision
                        continue
                    waiting.clear()
                    # 4. Assume the placement, so the next decision sees it taken.
                    attempt_no = job.attempts
                    placement = decision.placement
                    manifest = build_pod(
                        job.spec,
                        placement,
                        job_id=job.id,
                        attempt=attempt_no,
                        submitted_at=datetime.fromtimestamp(job.submitted_at, UTC),
                    )
                    namespace = manifest["metadata"]["namespace"]
                    attempt = Attempt(
                        attempt_no, placement.cluster, manifest["metadata"]["name"], namespace, now
                    )
                    job.attempt = attempt
                    job.state = JobState.PENDING
                    job.unschedulable_since = None
                    self._cache.assume(placement.cluster, manifest)
                    launches.append((job, attempt, manifest))
                # Only a placement changes what the next decision must see.
                snapshot = self._cache.snapshot()
        # 5. Launch: records first, then pods, in parallel.
        if launches:
            list(self._workers.map(lambda item: self._launch(*item), launches))
        # 6. Timers: unschedulable pods, lost clusters, expired outcomes.
        self._check_timers(now)
        # 7. Gauges.
        self._publish()

    def _launch(self, job: Job, attempt: Attempt, manifest: dict[str, Any]) -> None:
        try:
            self._store.save(job.to_record())
            self._cache.connection(attempt.cluster).create_pod(attempt.namespace, manifest)
        except ApiError as exc:
            if exc.status == 409:
                log.info("job.adopted_existing_pod", job_id=job.id, pod=attempt.pod)
                return
            self._launch_failed(job, attempt, exc)
            return
        except DispatcherError as exc:
            self._launch_failed(job, attempt, exc)
            return
        metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, self._clock() - job.submitted_at))
        log.info("job.launched", job_id=job.id, cluster=attempt.cluster, pod=attempt.pod)

    def _launch_failed(self, job: Job, attempt: Attempt, exc: DispatcherError) -> None:
        # Roll back: forget the assumption, requeue with a short delay.
        self._cache.forget(attempt.cluster, attempt.pod)
        with self._lock:
            if job.attempt is attempt:
                job.attempt = None
                job.state = JobState.QUEUED
                job.reason = f"launch on {attempt.cluster} failed: {exc}; retrying"
                job.not_before = self._clock() + 2.0
        log.warning("job.launch_failed", job_id=job.id, cluster=attempt.cluster, error=str(exc))

    # ----- tracking (informer events) -------------------------------------------------
    def _on_event(
        self, cluster: str, kind: str, event_type: str, obj: dict[str, Any] | None
    ) -> None:
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
            else:
                self._down_since.pop(cluster, None)

    def _on_pod(self, cluster: str, event_type: str, pod: dict[str, Any]) -> None:
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        job_id = labels.get(JOB_ID_LABEL)
        if not job_id:
            return
        attempt_no = int(labels.get(ATTEMPT_LABEL, "-1"))
        name = metadata.get("name", "")
        namespace = metadata.get("namespace", "")
        with self._lock:
            job = self._jobs.get(job_id)
            current = job.attempt if job else None
            if job is None:
                return  # not ours to judge (another dispatcher's, or acknowledged)
            if current is None or current.number != attempt_no or current.cluster != cluster:
                if event_type != "DELETED":
                    # A pod of an older attempt (e.g. on a cluster that came back after
                    # the job moved away): the task must not run twice.
                    self._workers.submit(self._delete_stale, cluster, namespace, name)
                return
            if event_type == "DELETED":
                self._pod_gone(job, current)
                return
            if job.state.finished:
                return
            self._track(job, current, pod)

    def _delete_stale(self, cluster: str, namespace: str, name: str) -> None:
        try:
            self._cache.connection(cluster).delete_pod(namespace, name, 0)
            log.info("pod.stale_deleted", cluster=cluster, pod=name)
        except ClusterError as exc:
            log.warning("pod.stale_delete_failed", cluster=cluster, pod=name, error=str(exc))

    def _track(self, job: Job, attempt: Attempt, pod: dict[str, Any]) -> None:
        outcome = classify_pod(pod)
        now = self._clock()
        if (pod.get("spec") or {}).get("nodeName") and job.scheduled_at is None:
            job.scheduled_at = now
        if outcome.phase is JobPhase.RUNNING and job.state is not JobState.RUNNING:
            job.state = JobState.RUNNING
            job.running_at = now
            job.unschedulable_since = None
            metrics.SUBMIT_TO_RUNNING_SECONDS.labels(cluster=attempt.cluster).observe(
                max(0.0, now - job.submitted_at)
            )
            self._changed.notify_all()
        elif outcome.phase is JobPhase.PENDING:
            if outcome.failure is FailureClass.UNSCHEDULABLE:
                if job.unschedulable_since is None:
                    job.unschedulable_since = now
                job.reason = outcome.message
            elif outcome.failure is FailureClass.IMAGE_PULL:
                # Waiting on an image that never comes is a failure of the task, not the
                # cluster: finish it rather than moving it.
                self._finish(job, JobState.FAILED, outcome.failure, outcome.message)
                self._cleanup(job, attempt, failed=True)
                return
        elif outcome.phase.finished:
            job.exit_code = outcome.exit_code
            job.result = outcome.result
            succeeded = outcome.phase is JobPhase.SUCCEEDED
            self._finish(
                job,
                JobState.SUCCEEDED if succeeded else JobState.FAILED,
                outcome.failure,
                outcome.message,
            )
            self._cleanup(job, attempt, failed=not succeeded)

    def _pod_gone(self, job: Job, attempt: Attempt) -> None:
        self._cache.forget(attempt.cluster, attempt.pod)
        if job.moving is not None:
            self._requeue(job, attempt, job.moving)
        elif job.cancel_requested and not job.state.finished:
            self._finish(job, JobState.CANCELLED, None, "cancelled")
        elif not job.state.finished:
            self._finish(
                job,
                JobState.FAILED,
                FailureClass.NODE_LOST,
                f"pod {attempt.pod} on {attempt.cluster} was deleted before it finished",
            )

    def _requeue(self, job: Job, attempt: Attempt, why: str) -> None:
        """The old attempt is gone (or its cluster lost): queue the next one elsewhere."""
        attempt.ended = why
        job.history.append(attempt)
        job.attempt = None
        job.moving = None
        job.excluded.add(attempt.cluster)
        if job.attempts >= self._service.max_attempts:
            self._finish(
                job,
                JobState.FAILED,
                FailureClass.UNSCHEDULABLE,
                f"gave up after {job.attempts} attempts; last: {why}",
            )
            return
        job.state = JobState.QUEUED
        job.scheduled_at = None
        job.reason = f"moved away from {attempt.cluster}: {why}"
        self._save(job)
        self._changed.notify_all()
        self._wake.set()

    def _finish(
        self, job: Job, state: JobState, failure: FailureClass | None, message: str
    ) -> None:
        job.state = state
        job.failure = failure
        job.message = message
        job.finished_at = self._clock()
        cluster = job.cluster or ""
        metrics.JOBS_FINISHED.labels(
            cluster=cluster,
            outcome=state.value,
            failure_class=(failure.value if failure and state is JobState.FAILED else ""),
        ).inc()
        metrics.JOB_DURATION_SECONDS.labels(outcome=state.value).observe(
            max(0.0, job.finished_at - job.submitted_at)
        )
        self._save(job)
        log.info("job.finished", job_id=job.id, state=state.value, cluster=cluster, message=message)
        self._changed.notify_all()

    def _save(self, job: Job) -> None:
        record = job.to_record()
        self._workers.submit(self._save_now, record)

    def _save_now(self, record: dict[str, Any]) -> None:
        try:
            self._store.save(record)
        except DispatcherError as exc:
            log.error("job.record_save_failed", job_id=record["id"], error=str(exc))

    def _cleanup(self, job: Job, attempt: Attempt, *, failed: bool) -> None:
        action = job.spec.on_finish_action
        if action is OnFinishAction.KEEP_POD:
            return
        if action is OnFinishAction.DELETE_SUCCEEDED_POD and failed:
            return
        linger = self._service.finished_pod_linger_seconds
        if linger <= 0:
            self._workers.submit(self._delete_pod, attempt, 0)
        else:
            # The log goes with the pod: leave a short task's log readable for a while
            # (or until the client acknowledges the job).
            job.cleanup_due = self._clock() + linger

    def _cleanup_now(self, job: Job) -> None:
        if job.cleanup_due is not None and job.attempt is not None:
            job.cleanup_due = None
            self._workers.submit(self._delete_pod, job.attempt, 0)

    def _delete_pod(self, attempt: Attempt, grace: int | None) -> None:
        try:
            self._cache.connection(attempt.cluster).delete_pod(
                attempt.namespace, attempt.pod, grace
            )
        except ApiError as exc:
            if exc.status != 404:
                log.warning("pod.delete_failed", pod=attempt.pod, error=str(exc))
        except ClusterError as exc:
            log.warning("pod.delete_failed", pod=attempt.pod, error=str(exc))

    # ----- timers ---------------------------------------------------------------------
    def _check_timers(self, now: float) -> None:
        grace = self._service.cluster_down_grace_seconds
        with self._lock:
            lost = {c for c, since in self._down_since.items() if now - since >= grace}
            for job in list(self._jobs.values()):
                attempt = job.attempt
                if job.state.finished:
                    if job.cleanup_due is not None and now >= job.cleanup_due:
                        self._cleanup_now(job)
                    if (
                        job.finished_at
                        and now - job.finished_at > self._service.finished_ttl_seconds
                    ):
                        del self._jobs[job.id]
                        self._cleanup_now(job)
                        self._workers.submit(self._store.delete, job.id)
                    continue
                if attempt is None:
                    continue
                if attempt.cluster in lost:
                    _record_failover(job, attempt, "cluster_down")
                    self._requeue(
                        job, attempt, f"cluster {attempt.cluster} lost (down > {grace:.0f}s)"
                    )
                    continue
                timeout = (
                    job.spec.schedule_timeout_seconds or self._service.schedule_timeout_seconds
                )
                if (
                    job.moving is None
                    and job.state is JobState.PENDING
                    and job.unschedulable_since is not None
                    and now - job.unschedulable_since >= timeout
                ):
                    _record_failover(job, attempt, "unschedulable")
                    job.moving = f"unschedulable on {attempt.cluster} for {timeout:.0f}s"
                    self._workers.submit(self._delete_pod, attempt, 0)

    def _publish(self) -> None:
        counts = self.counts()
        metrics.record_jobs((phase, cluster, n) for (phase, cluster), n in counts.items())
        metrics.QUEUE_DEPTH.set(sum(n for (phase, _), n in counts.items() if phase == "queued"))
        with self._lock:
            queued = [j.submitted_at for j in self._jobs.values() if j.state is JobState.QUEUED]
        # The wait histogram only counts jobs that left the queue; a stuck queue shows here.
        metrics.QUEUE_OLDEST_SUBMISSION.set(min(queued, default=0.0))

    # ----- restart --------------------------------------------------------------------
    def reattach(self) -> None:
        """Rebuild jobs from the store and the managed pods of every cluster."""
        records = self._store.load_all()
        with self._lock:
            for record in records:
                try:
                    job = Job.from_record(record)
                except (KeyError, ValueError, TypeError) as exc:
                    log.error("job.record_unreadable", job_id=record.get("id"), error=str(exc))
                    continue
                self._jobs[job.id] = job
        adopted = 0
        listed: set[str] = set()
        for cluster in self._clusters:
            if not self._cache.synced(cluster):
                # Its pods are unknown: its jobs stay as recorded until it is seen again
                # (or declared lost after the down grace).
                log.warning("reattach.cluster_unavailable", cluster=cluster)
                continue
            listed.add(cluster)
            for pod in self._cache.managed_pods(cluster):
                if self._adopt(cluster, pod):
                    adopted += 1
        relaunched = self._relaunch_missing(listed)
        log.info("reattach.done", jobs=len(self._jobs), pods_adopted=adopted, relaunched=relaunched)
        self._publish()

    def _relaunch_missing(self, listed: set[str]) -> int:
        """Jobs recorded as launched on a listed cluster whose pod is not there: the create
        never happened, or the pod was deleted while we were down. The cluster was listed,
        so launching the same attempt again cannot duplicate a pod."""
        present = {
            (cluster, (pod.get("metadata") or {}).get("name"))
            for cluster in listed
            for pod in self._cache.managed_pods(cluster)
        }
        relaunched = 0
        with self._lock:
            for job in self._jobs.values():
                attempt = job.attempt
                if job.state.finished or attempt is None or attempt.cluster not in listed:
                    continue
                if (attempt.cluster, attempt.pod) in present:
                    continue
                job.attempt = None
                job.state = JobState.QUEUED
                job.reason = f"pod {attempt.pod} was not found on {attempt.cluster}; relaunching"
                relaunched += 1
        return relaunched

    def _adopt(self, cluster: str, pod: dict[str, Any]) -> bool:
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        job_id = labels.get(JOB_ID_LABEL)
        if not job_id:
            return False
        attempt_no = int(labels.get(ATTEMPT_LABEL, "0"))
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                job = self._job_from_pod(pod)
                if job is None:
                    return False
                self._jobs[job_id] = job
            if job.state.finished:
                # A finished job's pod outlived our restart: clean it up as its policy says.
                current = job.attempt
                if current is not None and (current.cluster, current.number) == (
                    cluster,
                    attempt_no,
                ):
                    self._cleanup(job, current, failed=job.state is not JobState.SUCCEEDED)
                return False
            if job.attempt is None or job.attempt.number < attempt_no:
                job.attempt = Attempt(
                    attempt_no,
                    cluster,
                    metadata.get("name", ""),
                    metadata.get("namespace", ""),
                    self._clock(),
                )
            if job.attempt.number != attempt_no or job.attempt.cluster != cluster:
                return False
            if job.state is JobState.QUEUED:
                job.state = JobState.PENDING
            self._track(job, job.attempt, pod)
            return True

    def _job_from_pod(self, pod: dict[str, Any]) -> Job | None:
        """A job whose record is missing (written by an older version, or lost)."""
        metadata = pod.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        try:
            spec = TaskSpec.from_annotation(annotations[TASK_SPEC_ANNOTATION])
        except (KeyError, ValueError) as exc:
            log.error("reattach.pod_unreadable", pod=metadata.get("name"), error=str(exc))
            return None
        submitted = annotations.get(SUBMITTED_AT_ANNOTATION)
        submitted_at = (
            datetime.fromisoformat(submitted.replace("Z", "+00:00")).timestamp()
            if submitted
            else self._clock()
        )
        labels = metadata.get("labels") or {}
        return Job(
            id=labels[JOB_ID_LABEL],
            spec=spec,
            submitted_at=submitted_at,
            state=JobState.PENDING,
            idempotency_key=annotations.get(IDEMPOTENCY_KEY_ANNOTATION),
        )


__all__ = ["Cache", "Connection", "Dispatcher"]
