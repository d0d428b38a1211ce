"""A pod whose container cannot start says why, with the kubelet's message, and says
whether it is in the window ``startup_timeout_seconds`` bounds (bound to a node, not
started), so the dispatcher can end the wait instead of leaving the job pending forever."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.core import FailureClass, JobPhase, classify_pod


def _pending(
    waiting: dict[str, Any] | None = None, *, node: str | None = "node-1", init: bool = False
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending"}
    if waiting is not None:
        statuses = [{"name": "base", "image": "busybox", "state": {"waiting": waiting}}]
        status["initContainerStatuses" if init else "containerStatuses"] = statuses
    spec: dict[str, Any] = {"containers": [{"name": "base", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"spec": spec, "status": status}


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("CreateContainerConfigError", 'secret "db" not found'),
        ("CreateContainerConfigError", "couldn't find key password in Secret batch/db"),
        ("CreateContainerError", 'failed to reserve container name "base"'),
        ("RunContainerError", "exec: python: executable file not found in $PATH"),
    ],
)
def test_a_container_that_cannot_be_created_is_a_config_error_with_the_kubelet_message(
    reason: str, message: str
) -> None:
    outcome = classify_pod(_pending({"reason": reason, "message": message}))
    # The kubelet keeps retrying (a missing key can still be added), so the pod is pending;
    # its startup timeout decides when the wait ends.
    assert outcome.phase is JobPhase.PENDING
    assert outcome.failure is FailureClass.CREATE_CONTAINER_CONFIG_ERROR
    assert outcome.message == f"{reason}: container base: {message}"
    assert outcome.waiting_reason == reason
    assert outcome.starting


def test_a_config_error_without_detail_still_says_what_is_wrong() -> None:
    outcome = classify_pod(_pending({"reason": "CreateContainerConfigError"}))
    assert outcome.message == (
        "CreateContainerConfigError: container base cannot be created (the kubelet gave no detail)"
    )


@pytest.mark.parametrize("reason", ["InvalidImageName", "ErrImageNeverPull"])
def test_an_image_this_pod_can_never_get_fails_at_once(reason: str) -> None:
    outcome = classify_pod(_pending({"reason": reason, "message": "details"}))
    assert outcome.phase is JobPhase.FAILED
    assert outcome.failure is FailureClass.IMAGE_PULL
    assert outcome.message == f"{reason}: cannot pull image 'busybox' for container base: details"
    assert outcome.waiting_reason == reason
    # Finished: no startup window is left to time.
    assert not outcome.starting


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull"])
def test_image_pull_back_off_stays_pending_inside_its_startup_window(reason: str) -> None:
    outcome = classify_pod(_pending({"reason": reason}))
    assert outcome.phase is JobPhase.PENDING
    assert outcome.failure is FailureClass.IMAGE_PULL
    assert outcome.waiting_reason == reason
    assert outcome.starting


def test_a_container_being_created_is_starting_without_a_failure() -> None:
    outcome = classify_pod(_pending({"reason": "ContainerCreating"}))
    assert outcome.phase is JobPhase.PENDING
    assert outcome.failure is None
    assert outcome.waiting_reason == "ContainerCreating"
    assert outcome.message == "ContainerCreating: container base"
    assert outcome.starting


def test_an_init_container_stuck_on_config_is_reported_too() -> None:
    outcome = classify_pod(_pending({"reason": "CreateContainerConfigError"}, init=True))
    assert outcome.failure is FailureClass.CREATE_CONTAINER_CONFIG_ERROR
    assert outcome.starting


def test_a_pod_bound_by_its_scheduled_condition_is_starting() -> None:
    pod = _pending(node=None)
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    assert classify_pod(pod).starting


def test_a_pod_not_yet_scheduled_is_not_starting() -> None:
    outcome = classify_pod(_pending(node=None))
    assert outcome.phase is JobPhase.PENDING
    assert outcome.waiting_reason is None
    assert not outcome.starting
    unschedulable = _pending(node=None)
    unschedulable["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no"}
    ]
    assert not classify_pod(unschedulable).starting


def test_a_running_pod_is_no_longer_starting() -> None:
    pod = _pending()
    pod["status"] = {"phase": "Running"}
    outcome = classify_pod(pod)
    assert outcome.phase is JobPhase.RUNNING
    assert not outcome.starting
    assert outcome.waiting_reason is None


def test_a_failed_pod_stuck_on_config_keeps_its_class_and_message() -> None:
    pod = _pending({"reason": "CreateContainerConfigError", "message": 'secret "db" not found'})
    pod["status"]["phase"] = "Failed"
    outcome = classify_pod(pod)
    assert outcome.phase is JobPhase.FAILED
    assert outcome.failure is FailureClass.CREATE_CONTAINER_CONFIG_ERROR
    assert 'secret "db" not found' in outcome.message
    assert not outcome.starting
