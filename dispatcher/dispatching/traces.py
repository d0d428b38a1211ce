"""A job's trace, told from its state changes (``dispatcher.tracing`` says what it holds).

``changed`` is called with each record write that changed a job's state: the state it left
becomes a span from the moment it entered it to now, and a finished job's root span closes
the trace. No I/O of its own (the tracing module's exporter sends); nothing when tracing
is off.
"""

from __future__ import annotations

from typing import Any

from dispatcher import tracing
from dispatcher.core.lifecycle import State
from dispatcher.dispatching.jobs import Attempt, Job

__all__ = ["changed", "finished", "job_attributes"]


def job_attributes(job: Job, attempt: Attempt | None = None) -> dict[str, Any]:
    """What every span of the job says about it (of ``attempt``, or its current one): ids
    and names, never values."""
    attempt = attempt or job.attempt
    return {
        "dispatcher.job.id": job.id,
        "dispatcher.job.name": job.spec.name,
        "dispatcher.tenant": job.tenant,
        "dispatcher.cluster": attempt.cluster if attempt else None,
        "dispatcher.attempt": attempt.number if attempt else None,
        "k8s.namespace.name": attempt.namespace if attempt else None,
        "k8s.pod.name": attempt.pod if attempt else None,
    }


def _entered(job: Job) -> float:
    """When ``job`` entered its state: as this process saw it, or (after a restart, for
    the state it was re-read in) as its record tells."""
    if job.since is not None:
        return job.since
    attempt = job.attempt
    if job.state is State.QUEUED:
        return job.submitted_at
    if job.state is State.RUNNING and job.running_at is not None:
        return job.running_at
    if job.state in (State.LAUNCHING, State.PENDING) and attempt is not None:
        return attempt.created_at
    return job.submitted_at


def changed(old: Job, new: Job, now: float) -> None:
    """``old``'s state ended at ``now`` (``new`` is the job after it)."""
    if not tracing.enabled() or old.state is new.state:
        return
    attributes = {**job_attributes(old), "dispatcher.next_state": new.state.value}
    events: dict[str, float] = {}
    if old.state is State.QUEUED:
        attributes["dispatcher.routing.reason"] = old.reason
        attributes["dispatcher.routing.cluster"] = new.cluster
    if old.state is State.PENDING and new.scheduled_at is not None:
        events["scheduled"] = new.scheduled_at
    # The failure class only: the message may quote the task's log.
    failed = new.state is State.FAILED
    error = (new.failure.value if new.failure else "failed") if failed else None
    tracing.emit(
        old.trace,
        old.state.value,
        _entered(old),
        now,
        attributes,
        error=error,
        events=events,
    )
    if new.state.finished and not old.state.finished:
        finished(new, now)


def finished(job: Job, now: float) -> None:
    """The root span of a finished job: from its submission to its outcome."""
    if not tracing.enabled():
        return
    attributes = {
        **job_attributes(job),
        "dispatcher.outcome": job.state.value,
        "dispatcher.failure_class": job.failure.value if job.failure else None,
        "dispatcher.attempts": job.attempts,
        "dispatcher.exit_code": job.exit_code,
    }
    failed = job.state in (State.FAILED, State.REJECTED)
    tracing.emit(
        job.trace,
        "job",
        job.submitted_at,
        job.finished_at or now,
        attributes,
        root=True,
        error=(job.failure.value if job.failure else job.state.value) if failed else None,
    )
