"""A container the stack keeps waiting (KWOK stage ``sim.dispatcher.dev/never-start``)
carries the reason and a kubelet-style message, and ``classify_pod`` turns the pod the
API server reports into the failure class, message and startup window the dispatcher
acts on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client, watch

from dispatcher.core import FailureClass, JobPhase, Placement, PodDefaults, build_pod, classify_pod
from tests.stack import Stack
from tests.unit.factories import task


def _watch_until_waiting(stack: Stack, namespace: str, name: str, reason: str) -> dict[str, Any]:
    with stack.kube("plane") as api:
        core = client.CoreV1Api(api)
        for event in watch.Watch().stream(
            core.list_namespaced_pod,
            namespace,
            field_selector=f"metadata.name={name}",
            timeout_seconds=60,
        ):
            pod: dict[str, Any] = api.sanitize_for_serialization(event["object"])
            for status in (pod.get("status") or {}).get("containerStatuses") or ():
                if ((status.get("state") or {}).get("waiting") or {}).get("reason") == reason:
                    return pod
    raise AssertionError(f"pod {name} never waited with {reason}")


@pytest.mark.parametrize(
    ("reason", "failure", "phase"),
    [
        (
            "CreateContainerConfigError",
            FailureClass.CREATE_CONTAINER_CONFIG_ERROR,
            JobPhase.PENDING,
        ),
        ("RunContainerError", FailureClass.CREATE_CONTAINER_CONFIG_ERROR, JobPhase.PENDING),
        ("ImagePullBackOff", FailureClass.IMAGE_PULL, JobPhase.PENDING),
        ("ErrImageNeverPull", FailureClass.IMAGE_PULL, JobPhase.FAILED),
    ],
)
def test_a_waiting_container_is_classified_with_the_kubelet_message(
    stack: Stack, namespace: str, reason: str, failure: FailureClass, phase: JobPhase
) -> None:
    spec = task(annotations={"sim.dispatcher.dev/never-start": reason})
    manifest = build_pod(
        spec,
        Placement("plane", PodDefaults(namespace=namespace)),
        job_id="j-stuck",
        attempt=0,
        submitted_at=datetime.now(UTC),
    )
    with stack.kube("plane") as api:
        client.CoreV1Api(api).create_namespaced_pod(namespace, manifest)
    pod = _watch_until_waiting(stack, namespace, manifest["metadata"]["name"], reason)

    outcome = classify_pod(pod)
    assert outcome.failure is failure
    assert outcome.phase is phase
    assert outcome.waiting_reason == reason
    # The stage writes the message a kubelet would; it reaches the job's message.
    assert f"simulated {reason} for image {spec.image}" in outcome.message
    assert outcome.starting is (phase is JobPhase.PENDING)
