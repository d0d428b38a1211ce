"""What a pod says about its job, as a state-machine event; and which clusters answer.

The informers' pod events and the dispatcher's own reads of a pod both come through
``observe`` (``observation_mail``), so an attempt is judged the same way whichever way its
pod was seen. ``pod_identity`` reads the labels that tie a pod to a job and an attempt, and
refuses malformed ones instead of raising. ``Reachability`` remembers since when each
cluster has not answered.

I/O: none.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from dispatcher.core import ATTEMPT_LABEL, JOB_ID_LABEL, JobPhase, Outcome, classify_pod
from dispatcher.core.lifecycle import Event
from dispatcher.dispatching.jobs import Attempt
from dispatcher.dispatching.mailbox import Mail

__all__ = [
    "Observation",
    "PodIdentity",
    "Reachability",
    "alive",
    "observation_mail",
    "observe",
    "pod_identity",
    "same_attempt",
]


@dataclass(frozen=True, slots=True)
class PodIdentity:
    job_id: str
    attempt: int
    name: str
    namespace: str
    uid: str | None


def pod_identity(pod: dict[str, Any]) -> PodIdentity | None:
    """The job and attempt a managed pod belongs to; ``None`` if its labels are not ours
    or malformed (never an exception: one odd pod must not stop a restart)."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    job_id = labels.get(JOB_ID_LABEL)
    raw_attempt = labels.get(ATTEMPT_LABEL)
    if not isinstance(job_id, str) or not job_id or not isinstance(raw_attempt, str):
        return None
    if not raw_attempt.isdigit():
        return None
    return PodIdentity(
        job_id=job_id,
        attempt=int(raw_attempt),
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "")),
        uid=metadata.get("uid"),
    )


def alive(pod: dict[str, Any]) -> bool:
    """Whether the pod's containers may still run (not finished, not being deleted)."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in {"Succeeded", "Failed"}


@dataclass(frozen=True, slots=True)
class Observation:
    event: Event
    outcome: Outcome
    bound: bool  # the scheduler placed it on a node


def observe(pod: dict[str, Any]) -> Observation:
    """The event a seen pod stands for, with its classified outcome."""
    outcome = classify_pod(pod)
    bound = bool((pod.get("spec") or {}).get("nodeName"))
    if (pod.get("metadata") or {}).get("deletionTimestamp") and not outcome.phase.finished:
        return Observation(Event.POD_TERMINATING, outcome, bound)
    event = {
        JobPhase.PENDING: Event.POD_PENDING,
        JobPhase.RUNNING: Event.POD_RUNNING,
        JobPhase.SUCCEEDED: Event.POD_SUCCEEDED,
        JobPhase.FAILED: Event.POD_FAILED,
    }.get(outcome.phase, Event.POD_PENDING)
    return Observation(event, outcome, bound)


def observation_mail(pod: dict[str, Any], *, seen_deleted: bool) -> Mail:
    """The mail a seen pod sends its job: what it is now, or that it is gone."""
    if seen_deleted:
        return Mail(Event.POD_DELETED)
    observation = observe(pod)
    uid = (pod.get("metadata") or {}).get("uid")
    return Mail(observation.event, {"observation": observation, "uid": uid})


def same_attempt(attempt: Attempt | None, identity: PodIdentity, cluster: str) -> bool:
    """Whether a pod seen on ``cluster`` is the job's current ``attempt`` (``None``: none)."""
    return attempt is not None and (attempt.number, attempt.cluster) == (
        identity.attempt,
        cluster,
    )


class Reachability:
    """Since when each cluster has not answered (its health is ``DOWN``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_since: dict[str, float] = {}

    def lost(self, cluster: str, now: float) -> None:
        with self._lock:
            self._down_since.setdefault(cluster, now)

    def back(self, cluster: str) -> bool:
        """Mark ``cluster`` as answering; whether it had been down."""
        with self._lock:
            return self._down_since.pop(cluster, None) is not None

    def down(self, cluster: str) -> bool:
        with self._lock:
            return cluster in self._down_since

    def since(self) -> dict[str, float]:
        with self._lock:
            return dict(self._down_since)
