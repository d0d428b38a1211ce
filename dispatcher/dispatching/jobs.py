"""Jobs: one submitted task and everything that happened to it, as values. No I/O.

A ``Job`` is replaced, never changed in place: the dispatcher computes the next value from
the state machine's transition, writes its record, and only then publishes it, so readers
always see a state that the record store also holds. ``to_record``/``from_record`` give
the JSON kept in the record store (a ``DispatchJob`` object per job), from which a
restarted or newly elected dispatcher rebuilds everything.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from dispatcher.core import FailureClass, TaskSpec
from dispatcher.core.lifecycle import State
from dispatcher.tracing import JobTrace

#: The job states are the state machine's (``queued``, ``launching``, ``pending``...).
JobState = State


def job_id_for(idempotency_key: str | None, tenant: str | None = None) -> str:
    """The job id: derived from the idempotency key (within the tenant's own keys), so the
    same key is the same job (and the same pod name) across restarts; random without a
    key. A valid label value. Two tenants using the same key get two jobs."""
    if idempotency_key:
        scoped = idempotency_key if tenant is None else f"{tenant}\x00{idempotency_key}"
        return "j" + hashlib.sha256(scoped.encode()).hexdigest()[:20]
    return "j" + uuid.uuid4().hex[:20]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One pod of a job on one cluster, named before it is created."""

    number: int
    cluster: str
    pod: str
    namespace: str
    created_at: float
    uid: str | None = None  # known once the API server answered the create or it was seen
    ended: str | None = None  # why this attempt ended: "moved: ...", "abandoned: ..."
    #: Abandoned on an unreachable cluster: its pod may still run there until deleted.
    abandoned: bool = False
    #: Dependencies the dispatcher copied to the cluster for this attempt (names only:
    #: "Secret regcred copied to gpu-a100/batch from plane/batch/regcred").
    materialised: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "cluster": self.cluster,
            "pod": self.pod,
            "namespace": self.namespace,
            "created_at": self.created_at,
            "uid": self.uid,
            "ended": self.ended,
            "abandoned": self.abandoned,
            "materialised": list(self.materialised),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        return cls(
            number=int(data["number"]),
            cluster=str(data["cluster"]),
            pod=str(data["pod"]),
            namespace=str(data["namespace"]),
            created_at=float(data["created_at"]),
            uid=data.get("uid"),
            ended=data.get("ended"),
            abandoned=bool(data.get("abandoned", False)),
            materialised=tuple(str(m) for m in data.get("materialised") or ()),
        )


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


@dataclass(frozen=True, slots=True)
class Condition:
    """A Kubernetes-shaped condition (``kubectl describe`` tells the story)."""

    type: str
    status: str  # "True" / "False"
    reason: str
    message: str
    last_transition: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": _rfc3339(self.last_transition),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Condition:
        return cls(
            type=str(data["type"]),
            status=str(data["status"]),
            reason=str(data.get("reason", "")),
            message=str(data.get("message", "")),
            last_transition=_seconds(data.get("lastTransitionTime")),
        )


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    spec: TaskSpec
    submitted_at: float
    state: State = State.QUEUED
    idempotency_key: str | None = None
    #: The submitter's tenant (``None``: submitted without authentication); only it (and
    #: administrators, and tenants with ``read_others`` for reading) sees the job.
    tenant: str | None = None
    #: The current attempt (the last pod named), if one was launched.
    attempt: Attempt | None = None
    history: tuple[Attempt, ...] = ()
    #: Clusters this job moved away from: routing leaves them out.
    excluded: frozenset[str] = frozenset()
    reason: str = ""  # the latest routing explanation or status message
    failure: FailureClass | None = None
    message: str = ""
    exit_code: int | None = None
    result: Any = None
    scheduled_at: float | None = None
    running_at: float | None = None
    finished_at: float | None = None
    conditions: tuple[Condition, ...] = ()
    #: The submitter's W3C ``traceparent`` (validated), so the job's trace joins its own.
    traceparent: str | None = None
    #: The record's resourceVersion this value was read or written with.
    version: str = ""
    # Not persisted: timers and retry counters of this process.
    create_failures: int = 0
    resolve_at: float | None = None
    unschedulable_since: float | None = None
    waiting_since: float | None = None  # pod bound, container not started
    not_before: float = 0.0
    cleanup_due: float | None = None  # when a lingering finished pod is deleted
    cleaned: bool = False  # the finished pod was deleted (or kept on purpose)
    since: float | None = None  # when this process saw the job enter its state (traces)

    @property
    def trace(self) -> JobTrace:
        return JobTrace(self.id, self.traceparent)

    @property
    def cluster(self) -> str | None:
        return self.attempt.cluster if self.attempt else None

    @property
    def attempts(self) -> int:
        return len(self.history) + (1 if self.attempt else 0)

    def with_condition(
        self, type_: str, status: bool, reason: str, message: str, now: float
    ) -> Job:
        """This job with condition ``type_`` set (its transition time kept if unchanged)."""
        value = "True" if status else "False"
        kept = [c for c in self.conditions if c.type != type_]
        old = next((c for c in self.conditions if c.type == type_), None)
        since = old.last_transition if old is not None and old.status == value else now
        return replace(self, conditions=(*kept, Condition(type_, value, reason, message, since)))

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def view(self) -> dict[str, Any]:
        """What the API returns about the job."""
        return {
            "id": self.id,
            "name": self.spec.name,
            "idempotency_key": self.idempotency_key,
            "tenant": self.tenant,
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
            "conditions": [c.to_dict() for c in self.conditions],
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
            "tenant": self.tenant,
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
            "conditions": [c.to_dict() for c in self.conditions],
            "scheduled_at": self.scheduled_at,
            "running_at": self.running_at,
            "finished_at": self.finished_at,
            **({"traceparent": self.traceparent} if self.traceparent else {}),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], version: str = "") -> Job:
        attempt = record.get("attempt")
        return cls(
            id=record["id"],
            spec=TaskSpec.model_validate(record["spec"]),
            submitted_at=float(record["submitted_at"]),
            state=State(record["state"]),
            idempotency_key=record.get("idempotency_key"),
            tenant=record.get("tenant"),
            attempt=Attempt.from_dict(attempt) if attempt else None,
            history=tuple(Attempt.from_dict(a) for a in record.get("history") or []),
            excluded=frozenset(record.get("excluded") or []),
            reason=record.get("reason") or "",
            failure=FailureClass(record["failure"]) if record.get("failure") else None,
            message=record.get("message") or "",
            exit_code=record.get("exit_code"),
            result=record.get("result"),
            conditions=tuple(Condition.from_dict(c) for c in record.get("conditions") or []),
            scheduled_at=record.get("scheduled_at"),
            running_at=record.get("running_at"),
            finished_at=record.get("finished_at"),
            traceparent=record.get("traceparent") or None,
            version=version,
        )


__all__ = ["Attempt", "Condition", "Job", "JobState", "job_id_for"]
