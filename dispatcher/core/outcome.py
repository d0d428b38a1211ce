"""What happened to a task's pod: phase, failure class and a message; pure, no I/O.

``classify_pod(pod_dict)`` reads a Pod in the API's JSON shape and answers with an
``Outcome``: the job phase, a ``FailureClass`` and a sentence a DAG author can act on
("OOMKilled: container base exceeded memory limit 3Gi (exit code 137)").

A pending pod can already carry a failure class: it is *stuck* (image cannot be pulled,
config missing, unschedulable). Whether that is final is the dispatcher's call, made with
the task's startup and schedule timeouts; ``InvalidImageName`` never heals and is reported
as failed straight away.

``parse_result`` turns a termination message into the task's small JSON result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dispatcher.core.podspec import CONTAINER_NAME

__all__ = [
    "MAX_RESULT_BYTES",
    "FailureClass",
    "JobPhase",
    "Outcome",
    "classify_pod",
    "parse_result",
]

#: Kubernetes keeps at most 4096 bytes of a container's termination message.
MAX_RESULT_BYTES = 4096
_MAX_MESSAGE = 1000

_IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
_CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
_NODE_LOST_REASONS = frozenset({"NodeLost", "NodeShutdown", "Shutdown"})
_EVICTION_DISRUPTIONS = frozenset(
    {
        "EvictionByEvictionAPI",
        "PreemptionByScheduler",
        "DeletionByTaintManager",
        "TerminationByKubelet",
    }
)


class JobPhase(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.FAILED)


class FailureClass(StrEnum):
    SUCCEEDED = "succeeded"
    EXIT_CODE = "exit-code"
    OOM_KILLED = "oom-killed"
    IMAGE_PULL = "image-pull"
    UNSCHEDULABLE = "unschedulable"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    EVICTED = "evicted"
    CREATE_CONTAINER_CONFIG_ERROR = "create-container-config-error"
    NODE_LOST = "node-lost"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Outcome:
    phase: JobPhase
    #: ``SUCCEEDED`` once succeeded; the cause once failed; while pending or running, what
    #: the pod is stuck on, if anything; else ``None``.
    failure: FailureClass | None
    message: str
    exit_code: int | None = None
    #: The task's JSON result from the termination message, when it wrote one.
    result: Any = None


def parse_result(message: str | None, *, max_bytes: int = MAX_RESULT_BYTES) -> Any:
    """The termination message as JSON, or ``None`` if absent, too big or not JSON."""
    if not message or len(message.encode()) > max_bytes:
        return None
    try:
        return json.loads(message)
    except (ValueError, RecursionError):
        return None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _base_status(status: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = status.get("containerStatuses") or []
    for container in statuses:
        if container.get("name") == CONTAINER_NAME:
            return dict(container)
    return dict(statuses[0]) if statuses else {}


def _memory_limit(pod: Mapping[str, Any], container_name: str) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") == container_name:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            return None if limit is None else str(limit)
    return None


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or ():
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _stuck_waiting(status: Mapping[str, Any], phase: JobPhase, image: str | None) -> Outcome | None:
    for container in [
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        detail = waiting.get("message") or ""
        name = container.get("name", "?")
        if reason in _IMAGE_PULL_REASONS:
            shown = container.get("image") or image or "?"
            message = _clip(
                f"{reason}: cannot pull image {shown!r} for container {name}"
                + (f": {detail}" if detail else "")
            )
            final = JobPhase.FAILED if reason == "InvalidImageName" else phase
            return Outcome(final, FailureClass.IMAGE_PULL, message)
        if reason in _CONFIG_REASONS:
            message = _clip(f"{reason}: container {name}" + (f": {detail}" if detail else ""))
            return Outcome(phase, FailureClass.CREATE_CONTAINER_CONFIG_ERROR, message)
    return None


def _failed(pod: Mapping[str, Any], status: Mapping[str, Any]) -> Outcome:
    reason = status.get("reason") or ""
    detail = status.get("message") or ""
    base = _base_status(status)
    terminated = (base.get("state") or {}).get("terminated") or {}
    exit_code = terminated.get("exitCode")
    result = parse_result(terminated.get("message"))
    if reason == "Evicted":
        return Outcome(
            JobPhase.FAILED,
            FailureClass.EVICTED,
            _clip(f"Evicted: {detail or 'the node ran short of resources'}"),
            exit_code,
        )
    if reason == "DeadlineExceeded":
        return Outcome(
            JobPhase.FAILED,
            FailureClass.DEADLINE_EXCEEDED,
            _clip(f"DeadlineExceeded: {detail or 'activeDeadlineSeconds reached'}"),
            exit_code,
        )
    if reason in _NODE_LOST_REASONS:
        return Outcome(
            JobPhase.FAILED,
            FailureClass.NODE_LOST,
            _clip(f"{reason}: {detail or 'the node went away'}"),
            exit_code,
        )
    disruption = _condition(status, "DisruptionTarget")
    if (
        disruption is not None
        and disruption.get("status") == "True"
        and disruption.get("reason") in _EVICTION_DISRUPTIONS
    ):
        text = disruption.get("message") or disruption.get("reason")
        return Outcome(
            JobPhase.FAILED,
            FailureClass.EVICTED,
            _clip(f"{disruption.get('reason')}: {text}"),
            exit_code,
        )
    name = base.get("name", CONTAINER_NAME)
    if terminated.get("reason") == "OOMKilled":
        limit = _memory_limit(pod, name)
        what = f"exceeded memory limit {limit}" if limit else "ran out of memory"
        code = f" (exit code {exit_code})" if exit_code is not None else ""
        return Outcome(
            JobPhase.FAILED,
            FailureClass.OOM_KILLED,
            f"OOMKilled: container {name} {what}{code}",
            exit_code,
            result,
        )
    if exit_code is not None and exit_code != 0:
        message = f"container {name} exited with code {exit_code}"
        if terminated.get("reason") and terminated.get("reason") != "Error":
            message += f" ({terminated['reason']})"
        tail = terminated.get("message")
        if tail and result is None:
            message += ": " + tail.strip().splitlines()[-1]
        return Outcome(JobPhase.FAILED, FailureClass.EXIT_CODE, _clip(message), exit_code, result)
    stuck = _stuck_waiting(status, JobPhase.FAILED, None)
    if stuck is not None:
        return stuck
    text = f"{reason}: {detail}" if reason or detail else "the pod failed without a reason"
    return Outcome(JobPhase.FAILED, FailureClass.UNKNOWN, _clip(text), exit_code, result)


def _image(pod: Mapping[str, Any]) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") == CONTAINER_NAME:
            return str(container.get("image"))
    return None


def classify_pod(pod: Mapping[str, Any]) -> Outcome:
    """Phase, failure class and message of a pod in the API's JSON shape."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Succeeded":
        base = _base_status(status)
        terminated = (base.get("state") or {}).get("terminated") or {}
        return Outcome(
            JobPhase.SUCCEEDED,
            FailureClass.SUCCEEDED,
            "succeeded",
            terminated.get("exitCode", 0),
            parse_result(terminated.get("message")),
        )
    if phase == "Failed":
        return _failed(pod, status)
    if phase == "Unknown":
        detail = status.get("message") or "the node stopped reporting the pod's state"
        return Outcome(JobPhase.UNKNOWN, FailureClass.NODE_LOST, _clip(f"Unknown: {detail}"))
    if phase == "Running":
        return Outcome(JobPhase.RUNNING, None, "running")
    scheduled = _condition(status, "PodScheduled")
    if (
        scheduled is not None
        and scheduled.get("status") == "False"
        and (scheduled.get("reason") == "Unschedulable")
    ):
        detail = scheduled.get("message") or "no node fits"
        return Outcome(
            JobPhase.PENDING, FailureClass.UNSCHEDULABLE, _clip(f"Unschedulable: {detail}")
        )
    stuck = _stuck_waiting(status, JobPhase.PENDING, _image(pod))
    if stuck is not None:
        return stuck
    return Outcome(JobPhase.PENDING, None, "pending")
