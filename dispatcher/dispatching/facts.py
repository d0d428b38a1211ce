"""What an event does to a job besides its state: pure functions, no I/O, no clock.

``dispatcher.core.lifecycle.transition`` decides the next state and the actions; the
functions here give the job that comes with it:

- ``refine``: the event an observation stands for, given what the job has left (a pod
  gone while moving is a release; a release with no attempt left is giving up);
- ``advance``: the next ``Job`` value: the target state plus the event's facts (the
  attempt placed, the create's failures and when to read again, the pod's outcome,
  the messages, times and failure classes that come with entering a state).

Both are called under the job's mailbox, one event at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dispatcher.core import FailureClass, JobPhase, Outcome
from dispatcher.core.backoff import backoff_delay
from dispatcher.core.lifecycle import Action, Event, State
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.dispatching.tracking import Observation
from dispatcher.settings import ServiceSettings

__all__ = ["RESOLVE_SAFETY_SECONDS", "UNRESOLVED", "advance", "refine"]

#: While the outcome of a create is unknown (or a delete was sent), the pod is read again
#: after this long at the latest: a dropped watch event cannot leave a job waiting.
RESOLVE_SAFETY_SECONDS = 15.0
#: States that wait for a pod to appear or go: read again if nothing was heard.
UNRESOLVED = frozenset({State.LAUNCHING, State.CANCELLING, State.MOVING})


def refine(job: Job, event: Event, payload: dict[str, Any], service: ServiceSettings) -> Event:
    """Events whose meaning depends on what is left: attempts, create retries.

    May add ``reason``, ``message`` and ``failure`` to ``payload`` for the event returned.
    """
    gone = event in (Event.POD_DELETED, Event.POD_ABSENT)
    if job.state is State.MOVING and gone:
        event = Event.RELEASE
    spent = job.create_failures > service.launch_retries
    if job.state is State.LAUNCHING and event is Event.POD_ABSENT and spent:
        payload.setdefault("reason", f"create failed {job.create_failures} times; trying elsewhere")
        event = Event.RELEASE
    if event is Event.RELEASE and job.attempts >= service.max_attempts:
        why = payload.get("reason") or "no attempt left"
        payload["message"] = f"gave up after {job.attempts} attempts; last: {why}"
        payload["failure"] = FailureClass.UNSCHEDULABLE
        return Event.GIVE_UP
    return event


def advance(
    job: Job,
    target: State,
    event: Event,
    payload: dict[str, Any],
    actions: tuple[Action, ...],
    *,
    now: float,
    service: ServiceSettings,
    draw: Callable[[], float],
) -> Job:
    """The job after ``event``: the state machine's target and the event's facts."""
    new = _event_facts(replace(job, state=target), job, target, event, payload, now, draw)
    if Action.END_ATTEMPT in actions and job.attempt is not None:
        new = _ended(new, job, job.attempt, event, payload)
    if Action.DELETE_POD in actions and not target.finished:
        # The pod is gone when the watch says so; if that event is lost, a read says so.
        grace = float(service.cancel_grace(job.spec.termination_grace_period))
        new = replace(new, resolve_at=now + grace + RESOLVE_SAFETY_SECONDS)
    if target is not job.state:
        new = _entered(new, old=job, target=target, event=event, payload=payload, now=now)
    return new


def _event_facts(  # noqa: PLR0917 - private, called once
    new: Job,
    job: Job,
    target: State,
    event: Event,
    payload: dict[str, Any],
    now: float,
    draw: Callable[[], float],
) -> Job:
    if payload.get("uid") and new.attempt is not None and new.attempt.uid is None:
        new = replace(new, attempt=replace(new.attempt, uid=payload["uid"]))
    observation = payload.get("observation")
    if event is Event.PLACED:
        return replace(
            new,
            attempt=payload["attempt"],
            reason=payload.get("reason", new.reason),
            create_failures=0,
            resolve_at=None,
            unschedulable_since=None,
            waiting_since=None,
            scheduled_at=None,
        )
    if event is Event.CREATED:
        materialised = tuple(payload.get("materialised") or ())
        if materialised and new.attempt is not None:
            new = replace(new, attempt=replace(new.attempt, materialised=materialised))
            new = new.with_condition(
                "DependenciesCopied", True, "Copied", "; ".join(materialised), now
            )
        return replace(new, create_failures=0, resolve_at=None)
    if event is Event.CREATE_UNCERTAIN:
        failures = job.create_failures + 1
        delay = max(
            float(payload.get("retry_after") or 0.0),
            backoff_delay(failures, base=1.0, cap=30.0, draw=draw()),
        )
        return replace(
            new, create_failures=failures, resolve_at=now + delay, reason=payload["message"]
        )
    if event is Event.NOTE:
        return new.with_condition(
            payload["type"], payload["status"], payload["reason"], payload["message"], now
        )
    if event is Event.POD_ABSENT and target is State.LAUNCHING:
        return replace(new, resolve_at=None)
    if isinstance(observation, Observation) and target not in UNRESOLVED - {State.LAUNCHING}:
        # While cancelling or moving, the pod's last words are not the job's story.
        return _observed(new, observation, now)
    return new


def _observed(job: Job, observation: Observation, now: float) -> Job:
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


def _ended(new: Job, job: Job, attempt: Attempt, event: Event, payload: dict[str, Any]) -> Job:
    """``attempt`` (the job's current one) goes to the history; its cluster is avoided."""
    # A move ends with the pod's disappearance: the reason is why it moved.
    moved = job.reason if job.state is State.MOVING else None
    why = payload.get("reason") or payload.get("message") or moved or event.value
    ended = replace(attempt, ended=why, abandoned=event is Event.ABANDON)
    return replace(
        new,
        attempt=None,
        history=(*job.history, ended),
        excluded=new.excluded | {attempt.cluster},
        reason=f"moved away from {attempt.cluster}: {why}",
        scheduled_at=None,
        unschedulable_since=None,
        waiting_since=None,
        resolve_at=None,
        create_failures=0,
    )


def _entered(
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
        failure, message = _failure(old, event, payload, outcome)
        new = replace(new, failure=failure, message=message)
    elif target is State.CANCELLING:
        new = replace(new, reason="cancel requested; deleting the pod")
    elif target is State.CANCELLED:
        launched = old.attempt is not None
        new = replace(new, message="cancelled" if launched else "cancelled before it was launched")
    elif target is State.MOVING:
        new = replace(new, reason=payload.get("reason", "moving"))
    if target.finished:
        new = replace(new, finished_at=now, resolve_at=None)
    return new


def _failure(
    old: Job, event: Event, payload: dict[str, Any], outcome: Outcome | None
) -> tuple[FailureClass | None, str]:
    """Why a job failed, and the message that says so."""
    if outcome is not None and event is Event.POD_FAILED:
        return outcome.failure, outcome.message
    if event in (Event.POD_DELETED, Event.POD_ABSENT) and old.attempt is not None:
        return (
            FailureClass.NODE_LOST,
            f"pod {old.attempt.pod} on {old.attempt.cluster} was deleted before it finished",
        )
    failure = payload.get("failure") or FailureClass.UNKNOWN
    return failure, payload.get("message") or payload.get("reason") or event.value
