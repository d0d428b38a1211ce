"""The pod side effects the state machine asks for: create, delete, clean up, read.

Each answer from a cluster comes back as mail to the job's mailbox, never as a change of
the job here: a create's answer is ``CREATED``, ``CREATE_REFUSED`` (a permanent API error,
with the apiserver's message) or ``CREATE_UNCERTAIN`` (timeout, 5xx, 429, unreachable:
whether the pod exists is read later, never guessed); ``resolve`` reads the attempt's pod
and posts what it saw (or ``POD_ABSENT``). Only timers (``resolve_at``, ``cleanup_due``)
are set here, in this process's bookkeeping of the job.

Before a pod is created, the dependencies its cluster's copy policy brings are copied there
(``dispatching.copies``); when the attempt ends, they are released.

I/O: pod create/delete/read (and dependency copies) through the cache's cluster connections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from dispatcher import metrics, tracing
from dispatcher.core import FailureClass, OnFinishAction, build_pod, placement_for
from dispatcher.core.apierrors import authorizer_denied
from dispatcher.core.backoff import backoff_delay
from dispatcher.core.lifecycle import LIVE, Event, State
from dispatcher.dispatching.copies import Copier
from dispatcher.dispatching.facts import RESOLVE_SAFETY_SECONDS, UNRESOLVED
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.dispatching.mailbox import Mail, Mailboxes
from dispatcher.dispatching.ports import Cache
from dispatcher.dispatching.runner import Runner
from dispatcher.dispatching.table import JobTable
from dispatcher.dispatching.traces import job_attributes
from dispatcher.dispatching.tracking import Reachability, observation_mail
from dispatcher.errors import ApiError, ClusterError, DispatcherError, ErrorKind
from dispatcher.settings import ServiceSettings

log = structlog.get_logger("dispatcher.dispatching")

__all__ = ["PodActions", "deletes_pod"]


def deletes_pod(job: Job) -> bool:
    """Whether the finished job's pod is deleted (``on_finish_action``)."""
    action = job.spec.on_finish_action
    if action is OnFinishAction.KEEP_POD:
        return False
    return not (action is OnFinishAction.DELETE_SUCCEEDED_POD and job.state is not State.SUCCEEDED)


class PodActions:
    def __init__(
        self,
        cache: Cache,
        table: JobTable,
        mail: Mailboxes,
        runner: Runner,
        reach: Reachability,
        *,
        service: ServiceSettings,
        clock: Callable[[], float],
        draw: Callable[[], float],
        copier: Copier | None = None,
    ) -> None:
        self._cache = cache
        self._copier = copier or Copier(cache)
        self._table = table
        self._mail = mail
        self._runner = runner
        self._reach = reach
        self._service = service
        self._clock = clock
        self._draw = draw

    # ----- create ---------------------------------------------------------------------
    def create(self, job: Job, attempt: Attempt, manifest: dict[str, Any] | None) -> None:
        manifest = manifest or self._manifest(job, attempt)
        if manifest is None:
            message = f"{attempt.cluster} is not known yet"
            self._mail.post(job.id, Mail(Event.CREATE_UNCERTAIN, {"message": message}))
            return
        materialised = self._materialise(job, attempt)
        if materialised is None:
            return
        try:
            pod = self._traced_create(job, attempt, manifest)
        except ApiError as exc:
            if exc.kind is ErrorKind.CONFLICT:  # the name exists: this attempt's pod
                self._mail.post(job.id, Mail(Event.CREATED, {"materialised": materialised}))
            elif authorizer_denied(exc):
                # Not the pod: this cluster's RBAC, maybe not loaded yet after a restart.
                # Retried with backoff; after ``launch_retries``, another cluster is tried.
                self._uncertain(job, attempt, exc, retry_after=exc.retry_after)
            elif exc.kind is ErrorKind.PERMANENT:
                self._refused(job, attempt, exc)
            else:
                self._uncertain(job, attempt, exc, retry_after=exc.retry_after)
            return
        except DispatcherError as exc:
            self._uncertain(job, attempt, exc, retry_after=None)
            return
        uid = (pod.get("metadata") or {}).get("uid")
        log.info("job.launched", job_id=job.id, cluster=attempt.cluster, pod=attempt.pod)
        self._mail.post(job.id, Mail(Event.CREATED, {"uid": uid, "materialised": materialised}))

    def _materialise(self, job: Job, attempt: Attempt) -> list[str] | None:
        """The attempt's dependency copies, made before its pod (``dispatching.copies``);
        ``None`` when they could not all be made: the create's failure is posted instead
        and no pod is created that would name an object its cluster lacks."""
        try:
            with tracing.live(job.trace, "dependencies", job_attributes(job, attempt)) as span:
                made = list(self._copier.materialise(job, attempt))
                if span is not None:
                    span.set_attribute("dispatcher.materialised", made)
                return made
        except ApiError as exc:
            if exc.kind is ErrorKind.PERMANENT and not authorizer_denied(exc):
                self._refused(job, attempt, exc, what="a dependency copy")
            else:
                self._uncertain(job, attempt, exc, retry_after=exc.retry_after)
        except DispatcherError as exc:
            self._uncertain(job, attempt, exc, retry_after=None)
        return None

    def _traced_create(
        self, job: Job, attempt: Attempt, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        with tracing.live(job.trace, "pod.create", job_attributes(job, attempt)):
            return self._cache.connection(attempt.cluster).create_pod(attempt.namespace, manifest)

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

    def _refused(self, job: Job, attempt: Attempt, exc: ApiError, *, what: str = "the pod") -> None:
        metrics.LAUNCH_ERRORS.labels(cluster=attempt.cluster, kind="refused").inc()
        self._cache.forget(attempt.cluster, attempt.pod)
        message = f"the API server of {attempt.cluster} refused {what} ({exc.status}): {exc}"
        payload = {"failure": FailureClass.LAUNCH_REFUSED, "message": message}
        self._mail.post(job.id, Mail(Event.CREATE_REFUSED, payload))

    def _uncertain(
        self, job: Job, attempt: Attempt, exc: DispatcherError, *, retry_after: float | None
    ) -> None:
        metrics.LAUNCH_ERRORS.labels(cluster=attempt.cluster, kind="uncertain").inc()
        log.warning("job.create_uncertain", job_id=job.id, cluster=attempt.cluster, error=str(exc))
        payload = {"message": f"create on {attempt.cluster}: {exc}", "retry_after": retry_after}
        self._mail.post(job.id, Mail(Event.CREATE_UNCERTAIN, payload))

    # ----- delete ---------------------------------------------------------------------
    def delete(self, job: Job, attempt: Attempt, grace: int | None) -> None:
        try:
            self._cache.connection(attempt.cluster).delete_pod(
                attempt.namespace, attempt.pod, grace
            )
        except ClusterError as exc:
            # Not known to be gone: ``resolve_at`` reads it again and deletes what is there.
            log.warning("pod.delete_failed", job_id=job.id, pod=attempt.pod, error=str(exc))

    def delete_stale(self, cluster: str, namespace: str, name: str) -> None:
        """Delete a pod that must not run (another attempt's, a finished job's, an orphan's),
        on the runner: the caller may be an informer thread."""
        self._runner.submit(lambda: self._delete_now(cluster, namespace, name))

    def _delete_now(self, cluster: str, namespace: str, name: str) -> None:
        try:
            self._cache.connection(cluster).delete_pod(namespace, name, 0)
            log.info("pod.stale_deleted", cluster=cluster, pod=name)
        except ClusterError as exc:
            log.warning("pod.stale_delete_failed", cluster=cluster, pod=name, error=str(exc))

    def cleanup(self, job: Job, attempt: Attempt) -> Job:
        """A finished job's pod: deleted now, after ``finished_pod_linger_seconds``, or
        kept (``on_finish_action``); the job as it is afterwards."""
        self._cache.forget(attempt.cluster, attempt.pod)
        if not deletes_pod(job):
            return self._table.commit(replace(job, cleaned=True))
        if job.spec.xcom_sidecar and job.state is State.SUCCEEDED:
            # Its return.json lives in the sidecar's log: the pod stays until the client,
            # having read it, acknowledges the job (or the outcome expires).
            return self._table.commit(job)
        linger = self._service.finished_pod_linger_seconds
        if linger <= 0:
            self.delete(job, attempt, 0)
            return self._table.commit(replace(job, cleaned=True))
        # The log goes with the pod: leave a short task's log readable for a while (or
        # until the client acknowledges the job).
        return self._table.commit(replace(job, cleanup_due=self._clock() + linger))

    def release_copies(self, job: Job, attempt: Attempt) -> None:
        """The attempt has ended (its job finished, or it moved on): its dependency copies
        lose it as a user, and go when it was their last."""
        try:
            self._copier.release(job.id, attempt.cluster, attempt.namespace)
        except DispatcherError as exc:
            # Left to the sweep (``copy_sweep_interval_seconds``), which finds every copy.
            log.warning(
                "copy.release_failed", job_id=job.id, cluster=attempt.cluster, error=str(exc)
            )

    # ----- read -----------------------------------------------------------------------
    def resolve(self, job: Job) -> None:
        """Read the attempt's pod and post what is there: the cure for every uncertainty."""
        attempt = job.attempt
        self._table.touch(job.id, resolve_at=None)
        if attempt is None or job.state not in LIVE:
            return
        if self._reach.down(attempt.cluster):
            # Unreachable: nothing to read; the informers say when it is back.
            self._table.touch(job.id, resolve_at=self._clock() + RESOLVE_SAFETY_SECONDS)
            return
        try:
            pod = self._cache.connection(attempt.cluster).read_pod(attempt.namespace, attempt.pod)
        except DispatcherError as exc:
            log.info("job.resolve_deferred", job_id=job.id, cluster=attempt.cluster, error=str(exc))
            failures = job.create_failures + 1
            delay = backoff_delay(failures, base=2.0, cap=60.0, draw=self._draw())
            self._table.touch(job.id, resolve_at=self._clock() + delay)
            return
        if pod is None:
            self._mail.post(job.id, Mail(Event.POD_ABSENT))
            return
        self._mail.post(job.id, observation_mail(pod, seen_deleted=False))
        # Still waiting for the pod to come or go: read again if nothing is heard.
        self._table.touch_if(
            job.id,
            lambda current: current.state in UNRESOLVED and current.resolve_at is None,
            resolve_at=self._clock() + RESOLVE_SAFETY_SECONDS,
        )
