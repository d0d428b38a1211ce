"""A pod's status becomes a job phase, a failure class and a message a DAG author can
act on; a JSON termination message becomes the task's result."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.core import FailureClass, JobPhase, classify_pod, parse_result


def _pod(
    phase: str,
    *,
    reason: str | None = None,
    message: str | None = None,
    state: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    memory_limit: str | None = "3Gi",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if state is not None:
        status["containerStatuses"] = [{"name": "base", "image": "busybox", "state": state}]
    if conditions is not None:
        status["conditions"] = conditions
    limits = {"memory": memory_limit} if memory_limit else {}
    return {
        "spec": {
            "containers": [{"name": "base", "image": "busybox", "resources": {"limits": limits}}]
        },
        "status": status,
    }


def _terminated(
    exit_code: int, reason: str = "Error", message: str | None = None
) -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason}
    if message is not None:
        terminated["message"] = message
    return {"terminated": terminated}


def test_success_carries_the_json_result() -> None:
    outcome = classify_pod(_pod("Succeeded", state=_terminated(0, "Completed", '{"rows": 42}')))
    assert outcome.phase is JobPhase.SUCCEEDED
    assert outcome.failure is FailureClass.SUCCEEDED
    assert outcome.result == {"rows": 42}


def test_oom_kill_names_the_container_and_its_memory_limit() -> None:
    outcome = classify_pod(_pod("Failed", state=_terminated(137, "OOMKilled")))
    assert outcome.phase is JobPhase.FAILED
    assert outcome.failure is FailureClass.OOM_KILLED
    assert outcome.message == "OOMKilled: container base exceeded memory limit 3Gi (exit code 137)"
    assert outcome.exit_code == 137


def test_non_zero_exit_shows_the_last_log_line() -> None:
    outcome = classify_pod(
        _pod("Failed", state=_terminated(2, message="Traceback...\nValueError: bad input\n"))
    )
    assert outcome.failure is FailureClass.EXIT_CODE
    assert outcome.message == "container base exited with code 2: ValueError: bad input"


def test_the_log_tail_in_a_failure_message_is_redacted_and_truncated() -> None:
    # With FallbackToLogsOnError the termination message is the task's log tail, which
    # may print its credentials; the job message is shown by the API and kept in records.
    line = (
        "connect failed: password=hunter2 Authorization: Bearer abc.def "
        "vault hvs.CAESIJlongvaulttokenvalue0123 " + "x" * 2000
    )
    outcome = classify_pod(_pod("Failed", state=_terminated(1, message="start\n" + line)))
    for leak in ("hunter2", "abc.def", "hvs.CAESIJlongvaulttokenvalue0123"):
        assert leak not in outcome.message
    assert outcome.message.startswith(
        "container base exited with code 1: connect failed: password=[redacted]"
    )
    assert len(outcome.message) < 400


@pytest.mark.parametrize(
    ("reason", "failure"),
    [
        ("Evicted", FailureClass.EVICTED),
        ("DeadlineExceeded", FailureClass.DEADLINE_EXCEEDED),
        ("NodeLost", FailureClass.NODE_LOST),
        ("Weird", FailureClass.UNKNOWN),
    ],
)
def test_pod_level_failure_reasons_are_classified(reason: str, failure: FailureClass) -> None:
    outcome = classify_pod(_pod("Failed", reason=reason, message="details"))
    assert outcome.phase is JobPhase.FAILED
    assert outcome.failure is failure
    assert outcome.message == f"{reason}: details"


def test_preemption_is_an_eviction() -> None:
    outcome = classify_pod(
        _pod(
            "Failed",
            state=_terminated(143),
            conditions=[
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "PreemptionByScheduler",
                    "message": "preempted by a higher priority pod",
                }
            ],
        )
    )
    assert outcome.failure is FailureClass.EVICTED


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull"])
def test_image_pull_trouble_leaves_the_pod_pending_but_flagged(reason: str) -> None:
    outcome = classify_pod(
        _pod("Pending", state={"waiting": {"reason": reason, "message": "not found"}})
    )
    assert outcome.phase is JobPhase.PENDING
    assert outcome.failure is FailureClass.IMAGE_PULL
    assert outcome.message == f"{reason}: cannot pull image 'busybox' for container base: not found"


def test_an_invalid_image_name_fails_at_once() -> None:
    outcome = classify_pod(_pod("Pending", state={"waiting": {"reason": "InvalidImageName"}}))
    assert outcome.phase is JobPhase.FAILED
    assert outcome.failure is FailureClass.IMAGE_PULL


def test_config_errors_are_flagged() -> None:
    outcome = classify_pod(
        _pod(
            "Pending",
            state={
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "s" not found',
                }
            },
        )
    )
    assert outcome.failure is FailureClass.CREATE_CONTAINER_CONFIG_ERROR
    assert 'secret "s" not found' in outcome.message


def test_unschedulable_pods_say_why() -> None:
    outcome = classify_pod(
        _pod(
            "Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        )
    )
    assert outcome.phase is JobPhase.PENDING
    assert outcome.failure is FailureClass.UNSCHEDULABLE
    assert (
        outcome.message == "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )


def test_running_pending_and_unknown_phases() -> None:
    assert classify_pod(_pod("Running")).phase is JobPhase.RUNNING
    assert classify_pod({}).phase is JobPhase.PENDING
    unknown = classify_pod(_pod("Unknown"))
    assert unknown.phase is JobPhase.UNKNOWN
    assert unknown.failure is FailureClass.NODE_LOST


def test_messages_are_bounded() -> None:
    outcome = classify_pod(_pod("Failed", reason="Evicted", message="x" * 10_000))
    assert len(outcome.message) <= 1000


@pytest.mark.parametrize(
    ("message", "result"),
    [
        ('{"a": 1}', {"a": 1}),
        ("[1, 2]", [1, 2]),
        ("not json", None),
        ("", None),
        (None, None),
        ("[" * 5000, None),
        ('"' + "x" * 5000 + '"', None),
    ],
)
def test_termination_messages_parse_as_small_json_results(message: str | None, result: Any) -> None:
    assert parse_result(message) == result


def test_an_init_container_killed_for_memory_is_oom_killed_naming_it() -> None:
    pod = {
        "spec": {
            "initContainers": [{"name": "unpack", "resources": {"limits": {"memory": "64Mi"}}}],
            "containers": [{"name": "base"}],
        },
        "status": {
            "phase": "Failed",
            "initContainerStatuses": [
                {
                    "name": "unpack",
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
            "containerStatuses": [
                {"name": "base", "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    }
    outcome = classify_pod(pod)
    assert outcome.failure is FailureClass.OOM_KILLED
    assert (
        outcome.message
        == "OOMKilled: init container unpack exceeded memory limit 64Mi (exit code 137)"
    )
