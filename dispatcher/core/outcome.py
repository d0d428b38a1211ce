"""What happened to a task's pod: phase, failure class and a message; pure, no I/O.

``classify_pod(pod_dict)`` reads a Pod in the API's JSON shape and answers with an
``Outcome``: the job phase, a ``FailureClass`` and a sentence a DAG author can act on
("OOMKilled: container base exceeded memory limit 3Gi (exit code 137)").

A pending pod can already carry a failure class: it is *stuck*.

- ``UNSCHEDULABLE``: no node fits (the scheduler's message). The dispatcher's schedule
  timeout decides when to move it elsewhere.
- ``IMAGE_PULL``: ``ImagePullBackOff``/``ErrImagePull`` stay pending (a registry can come
  back); ``InvalidImageName`` and ``ErrImageNeverPull`` never heal for this pod and are
  reported as failed at once.
- ``CREATE_CONTAINER_CONFIG_ERROR``: ``CreateContainerConfigError`` (a referenced Secret or
  ConfigMap key is missing), ``CreateContainerError``, ``RunContainerError``: the kubelet
  retries, so the pod stays pending, with the kubelet's message. It is a failure of the
  task, not of the cluster: another cluster would fail the same way.

What a stuck pod may wait for is bounded by the task's ``startup_timeout_seconds``,
counted from the moment it is bound to a node: ``Outcome.starting`` says the pod is in
that window (bound, its container not started), ``Outcome.waiting_reason`` says on what
(``ContainerCreating``, ``ImagePullBackOff``...). The clock is the dispatcher's.

``parse_result`` turns a termination message into the task's small JSON result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from dispatcher.core.podspec import CONTAINER_NAME
from dispatcher.core.redaction import redact_text

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
#: How much of a failed task's log tail its job message keeps.
_MAX_TAIL = 300

_IMAGE_PULL_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
)
#: Waiting reasons no retry of the kubelet can cure for this pod: its spec is at fault.
_FINAL_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
_CONFIG_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
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
    """Why a job ended (or, while pending, what its pod is stuck on)."""

    SUCCEEDED = "succeeded"
    EXIT_CODE = "exit-code"
    OOM_KILLED = "oom-killed"
    IMAGE_PULL = "image-pull"
    UNSCHEDULABLE = "unschedulable"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    EVICTED = "evicted"
    #: The container cannot be created or started as specified (missing Secret/ConfigMap
    #: key, runtime refusal): ``CreateContainerConfigError``, ``CreateContainerError``,
    #: ``RunContainerError``.
    CREATE_CONTAINER_CONFIG_ERROR = "create-container-config-error"
    #: An init container (not the task's own) exited non-zero, so the task never started:
    #: ``init_containers``' command, image or inputs are at fault. Its exit code is in the
    #: message, not ``exit_code`` (which, as ``skip_on_exit_code``, is the task's).
    INIT_CONTAINER = "init-container"
    NODE_LOST = "node-lost"
    #: The API server refused to create the pod (400, 403, 404 namespace, 422): the spec or
    #: the cluster's policy is at fault; retrying cannot help. The message is the server's.
    LAUNCH_REFUSED = "launch-refused"
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
    #: Why the (first stuck, else the task's) container waits, as the kubelet says it:
    #: ``ContainerCreating``, ``ImagePullBackOff``, ``CreateContainerConfigError``...
    waiting_reason: str | None = None
    #: Pending, bound to a node, container not started yet: the window the task's
    #: ``startup_timeout_seconds`` bounds. ``False`` before scheduling and once running.
    starting: bool = False


def parse_result(message: str | None, *, max_bytes: int = MAX_RESULT_BYTES) -> Any:
    """The termination message as JSON, or ``None`` if absent, too big or not JSON."""
    if not message or len(message.encode()) > max_bytes:
        return None
    try:
        return json.loads(message)
    except (ValueError, RecursionError):
        return None


def _log_tail(text: str) -> str:
    """The last line of a termination message (with ``FallbackToLogsOnError``, the task's
    log tail), cut to ``_MAX_TAIL`` characters and with credential-looking text redacted
    by the logger's own rule: it becomes the job's message, which the API and records show."""
    line = redact_text(text.strip().splitlines()[-1])
    return line if len(line) <= _MAX_TAIL else line[: _MAX_TAIL - 1] + "…"


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


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ]


def _stuck_waiting(status: Mapping[str, Any], phase: JobPhase, image: str | None) -> Outcome | None:
    for container in _container_statuses(status):
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
            final = JobPhase.FAILED if reason in _FINAL_REASONS else phase
            return Outcome(final, FailureClass.IMAGE_PULL, message, waiting_reason=reason)
        if reason in _CONFIG_REASONS:
            message = _clip(
                f"{reason}: container {name}"
                + (f": {detail}" if detail else " cannot be created (the kubelet gave no detail)")
            )
            return Outcome(
                phase, FailureClass.CREATE_CONTAINER_CONFIG_ERROR, message, waiting_reason=reason
            )
    return None


def _waiting(status: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(container, reason, message) of the first container still waiting, if any."""
    for container in _container_statuses(status):
        waiting = (container.get("state") or {}).get("waiting")
        if isinstance(waiting, Mapping):
            return (
                str(container.get("name", "?")),
                str(waiting.get("reason") or "Waiting"),
                str(waiting.get("message") or ""),
            )
    return None


def _bound(pod: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    if (pod.get("spec") or {}).get("nodeName"):
        return True
    scheduled = _condition(status, "PodScheduled")
    return scheduled is not None and scheduled.get("status") == "True"


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
    if not terminated:
        failed_init = _failed_init_container(pod, status)
        if failed_init is not None:
            return failed_init
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
        if tail and result is None and tail.strip():
            message += ": " + _log_tail(tail)
        return Outcome(JobPhase.FAILED, FailureClass.EXIT_CODE, _clip(message), exit_code, result)
    stuck = _stuck_waiting(status, JobPhase.FAILED, None)
    if stuck is not None:
        return stuck
    text = f"{reason}: {detail}" if reason or detail else "the pod failed without a reason"
    return Outcome(JobPhase.FAILED, FailureClass.UNKNOWN, _clip(text), exit_code, result)


def _failed_init_container(pod: Mapping[str, Any], status: Mapping[str, Any]) -> Outcome | None:
    """The first init container that ended non-zero, when the task's own never ran."""
    for container in status.get("initContainerStatuses") or ():
        terminated = (container.get("state") or {}).get("terminated") or {}
        code = terminated.get("exitCode")
        if not terminated or code in (None, 0):
            continue
        name = container.get("name", "?")
        reason = terminated.get("reason")
        if reason == "OOMKilled":
            limit = _init_memory_limit(pod, name)
            what = f"exceeded memory limit {limit}" if limit else "ran out of memory"
            message = f"OOMKilled: init container {name} {what} (exit code {code})"
            return Outcome(JobPhase.FAILED, FailureClass.OOM_KILLED, message)
        message = f"init container {name} exited with code {code}"
        if reason and reason != "Error":
            message += f" ({reason})"
        tail = terminated.get("message")
        if tail and tail.strip():
            message += ": " + tail.strip().splitlines()[-1]
        message += "; the task's container never started"
        return Outcome(JobPhase.FAILED, FailureClass.INIT_CONTAINER, _clip(message))
    return None


def _init_memory_limit(pod: Mapping[str, Any], name: str) -> str | None:
    for container in (pod.get("spec") or {}).get("initContainers") or ():
        if container.get("name") == name:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            return None if limit is None else str(limit)
    return None


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
    starting = _bound(pod, status)
    stuck = _stuck_waiting(status, JobPhase.PENDING, _image(pod))
    if stuck is not None:
        return replace(stuck, starting=starting and stuck.phase is JobPhase.PENDING)
    waiting = _waiting(status)
    if waiting is None:
        return Outcome(JobPhase.PENDING, None, "pending", starting=starting)
    name, reason, detail = waiting
    message = _clip(f"{reason}: container {name}" + (f": {detail}" if detail else ""))
    return Outcome(JobPhase.PENDING, None, message, waiting_reason=reason, starting=starting)
