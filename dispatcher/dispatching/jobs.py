"""Jobs: one submitted task and everything that happened to it. No I/O.

A job is mutable, but only the dispatcher changes it, under its lock; readers get
``JobView`` copies. ``to_record``/``from_record`` give the JSON kept in the job store so a
restarted dispatcher loses nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dispatcher.core import FailureClass, TaskSpec


class JobState(StrEnum):
    QUEUED = "queued"  # waiting for a cluster with room (or a launch retry)
    PENDING = "pending"  # pod created, not running yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # no cluster could ever run it

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.REJECTED})


def job_id_for(idempotency_key: str | None) -> str:
    """The job id: derived from the idempotency key, so the same key is the same job (and
    the same pod name) across restarts; random without a key. A valid label value."""
    if idempotency_key:
        return "j" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]
    return "j" + uuid.uuid4().hex[:20]


@dataclass
class Attempt:
    """One pod of a job on one cluster."""

    number: int
    cluster: str
    pod: str
    namespace: str
    created_at: float
    ended: str | None = None  # why this attempt ended: its outcome, "moved: ..." or "lost"

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "cluster": self.cluster,
            "pod": self.pod,
            "namespace": self.namespace,
            "created_at": self.created_at,
            "ended": self.ended,
        }


@dataclass
class Job:
    id: str
    spec: TaskSpec
    submitted_at: float
    state: JobState = JobState.QUEUED
    idempotency_key: str | None = None
    #: The current attempt (the last pod), if one was launched.
    attempt: Attempt | None = None
    history: list[Attempt] = field(default_factory=list)
    #: Clusters this job moved away from: routing leaves them out.
    excluded: set[str] = field(default_factory=set)
    reason: str = ""  # the latest routing explanation or status message
    failure: FailureClass | None = None
    message: str = ""
    exit_code: int | None = None
    result: Any = None
    scheduled_at: float | None = None
    running_at: float | None = None
    finished_at: float | None = None
    # Transient (not persisted): a failover or cancel waits for the old pod to go.
    moving: str | None = None
    cancel_requested: bool = False
    unschedulable_since: float | None = None
    not_before: float = 0.0
    cleanup_due: float | None = None  # when a lingering finished pod is deleted

    @property
    def cluster(self) -> str | None:
        return self.attempt.cluster if self.attempt else None

    @property
    def attempts(self) -> int:
        return len(self.history) + (1 if self.attempt else 0)

    def view(self) -> dict[str, Any]:
        """What the API returns about the job."""
        return {
            "id": self.id,
            "name": self.spec.name,
            "idempotency_key": self.idempotency_key,
            "state": self.state.value,
            "cluster": self.cluster,
            "namespace": self.attempt.namespace if self.attempt else None,
            "pod": self.attempt.pod if self.attempt else None,
            "attempts": self.attempts,
            "history": [
                a.to_dict() for a in [*self.history, *([self.attempt] if self.attempt else [])]
            ],
            "reason": self.reason,
            "failure": self.failure.value if self.failure else None,
            "message": self.message,
            "exit_code": self.exit_code,
            "result": self.result,
            "submitted_at": self.submitted_at,
            "scheduled_at": self.scheduled_at,
            "running_at": self.running_at,
            "finished_at": self.finished_at,
            "priority": self.spec.requirements.priority,
        }

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": self.spec.model_dump(mode="json", exclude_defaults=True),
            "idempotency_key": self.idempotency_key,
            "submitted_at": self.submitted_at,
            "state": self.state.value,
            "attempt": self.attempt.to_dict() if self.attempt else None,
            "history": [a.to_dict() for a in self.history],
            "excluded": sorted(self.excluded),
            "reason": self.reason,
            "failure": self.failure.value if self.failure else None,
            "message": self.message,
            "exit_code": self.exit_code,
            "result": self.result,
            "scheduled_at": self.scheduled_at,
            "running_at": self.running_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        attempt = record.get("attempt")
        return cls(
            id=record["id"],
            spec=TaskSpec.model_validate(record["spec"]),
            submitted_at=float(record["submitted_at"]),
            state=JobState(record["state"]),
            idempotency_key=record.get("idempotency_key"),
            attempt=Attempt(**attempt) if attempt else None,
            history=[Attempt(**a) for a in record.get("history", [])],
            excluded=set(record.get("excluded", [])),
            reason=record.get("reason", ""),
            failure=FailureClass(record["failure"]) if record.get("failure") else None,
            message=record.get("message", ""),
            exit_code=record.get("exit_code"),
            result=record.get("result"),
            scheduled_at=record.get("scheduled_at"),
            running_at=record.get("running_at"),
            finished_at=record.get("finished_at"),
        )
