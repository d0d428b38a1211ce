"""What is due for a job at a moment: pure functions of the job, the time and the clusters.

Each turn of the dispatch loop asks, for every job, which events time has brought: a read
of an attempt whose outcome is unknown, a condition saying its cluster does not answer
(or answers again), a relaunch under a cluster's ``relaunch`` policy, a move away from a
cluster that cannot schedule it, a startup timeout, a lingering finished pod's cleanup,
a finished job's expiry. The answer is a ``Due``: fields of the job's in-memory
bookkeeping to change at once, and mails to post to its mailbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dispatcher.core import FailureClass
from dispatcher.core.lifecycle import Event, State
from dispatcher.dispatching.facts import RESOLVE_SAFETY_SECONDS, UNRESOLVED
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.dispatching.mailbox import RESOLVE
from dispatcher.settings import ServiceSettings, UnreachablePolicy

__all__ = ["UNREACHABLE", "Due", "Post", "finished_due", "live_due", "unreachable_condition"]

#: The condition a job carries while its attempt's cluster does not answer.
UNREACHABLE = "ClusterUnreachable"


@dataclass(frozen=True, slots=True)
class Post:
    kind: Event | str
    payload: dict[str, Any] = field(default_factory=dict)
    #: A failover this post starts, by reason (``FAILOVERS`` metric), if any.
    failover: str | None = None


@dataclass(frozen=True, slots=True)
class Due:
    touch: dict[str, Any] = field(default_factory=dict)
    posts: tuple[Post, ...] = ()


NOTHING = Due()


def finished_due(job: Job, now: float, service: ServiceSettings) -> Due:
    """A finished job: its lingering pod's cleanup, then its expiry."""
    touch: dict[str, Any] = {}
    posts: list[Post] = []
    if job.cleanup_due is not None and now >= job.cleanup_due:
        touch = {"cleanup_due": None, "cleaned": True}
        posts.append(Post(Event.LINGER_DUE))
    if job.finished_at is not None and now - job.finished_at > service.finished_ttl_seconds:
        posts.append(Post(Event.FORGET))
    return Due(touch, tuple(posts))


def live_due(
    job: Job,
    now: float,
    *,
    down_since: float | None,
    policy: UnreachablePolicy,
    service: ServiceSettings,
) -> Due:
    """A job with an attempt: reads, its cluster's reachability, moves and timeouts.

    ``down_since`` is when the attempt's cluster stopped answering (``None``: it answers).
    """
    attempt = job.attempt
    if attempt is None:
        return NOTHING
    if job.resolve_at is not None and now >= job.resolve_at:
        return Due({"resolve_at": None}, (Post(RESOLVE),))
    touch: dict[str, Any] = {}
    if job.state in UNRESOLVED and job.resolve_at is None:
        touch["resolve_at"] = now + RESOLVE_SAFETY_SECONDS
    posts: list[Post] = []
    noted = job.condition(UNREACHABLE)
    if (down_since is not None) != (noted is not None and noted.status == "True"):
        posts.append(Post(Event.NOTE, unreachable_condition(attempt, down_since, now)))
    if down_since is not None:
        relaunch = policy.action == "relaunch" and job.attempts < service.max_attempts
        if relaunch and now - down_since >= policy.relaunch_after_seconds:
            posts.append(_abandon(attempt, now - down_since, policy))
        return Due(touch, tuple(posts))
    posts.extend(_timeouts(job, attempt, now, service))
    return Due(touch, tuple(posts))


def unreachable_condition(attempt: Attempt, since: float | None, now: float) -> dict[str, Any]:
    """The ``ClusterUnreachable`` condition's payload: true since ``since``, or false."""
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


def _abandon(attempt: Attempt, silent: float, policy: UnreachablePolicy) -> Post:
    reason = (
        f"cluster {attempt.cluster} unreachable for {silent:.0f}s "
        f"(policy: relaunch after {policy.relaunch_after_seconds:.0f}s)"
    )
    return Post(Event.ABANDON, {"reason": reason}, failover="cluster_down")


def _timeouts(job: Job, attempt: Attempt, now: float, service: ServiceSettings) -> list[Post]:
    """A pending pod that cannot be scheduled moves; one that does not start fails."""
    if job.state is not State.PENDING:
        return []
    timeout = job.spec.schedule_timeout_seconds or service.schedule_timeout_seconds
    if job.unschedulable_since is not None and now - job.unschedulable_since >= timeout:
        reason = f"unschedulable on {attempt.cluster} for {timeout:.0f}s"
        return [Post(Event.MOVE, {"reason": reason}, failover="unschedulable")]
    startup = job.spec.startup_timeout_seconds
    if job.waiting_since is not None and now - job.waiting_since >= startup:
        message = f"container did not start within {startup}s of being scheduled" + (
            f": {job.reason}" if job.reason else ""
        )
        failure = job.failure or FailureClass.DEADLINE_EXCEEDED
        return [Post(Event.FAIL, {"failure": failure, "message": message})]
    return []
