"""The core's public API changes only on purpose, and every exported name exists."""

from __future__ import annotations

import dispatcher.core

EXPECTED = {
    # labels and annotations on every pod the dispatcher creates
    "ATTEMPT_LABEL",
    "CONTAINER_NAME",
    "IDEMPOTENCY_KEY_ANNOTATION",
    "JOB_ID_LABEL",
    "MANAGED_BY_LABEL",
    "MANAGED_BY_VALUE",
    "SUBMITTED_AT_ANNOTATION",
    # task specs
    "OnFinishAction",
    "PodDefaults",
    "Requirements",
    "TaskSpec",
    "Toleration",
    "parse_task_spec",
    # snapshots
    "ClusterInfo",
    "ClusterRole",
    "ClusterState",
    "CostTable",
    "Health",
    "NodeInfo",
    "NodeShape",
    "Snapshot",
    "Taint",
    "pod_requests",
    "snapshot_from_document",
    "usage_by_node",
    # routing
    "ClusterVerdict",
    "Decision",
    "PodConstraints",
    "Reason",
    "RoutingPolicy",
    "ScoreWeights",
    "Strategy",
    "Verdict",
    "placement_for",
    "pod_constraints",
    "route",
    # pods
    "Placement",
    "build_pod",
    "managed_pods_selector",
    "pod_name",
    # outcomes
    "FailureClass",
    "JobPhase",
    "Outcome",
    "classify_pod",
    "parse_result",
}


def test_core_exports_exactly_the_public_api() -> None:
    assert set(dispatcher.core.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(dispatcher.core, name), name


def test_pod_identity_keys_are_stable() -> None:
    assert dispatcher.core.MANAGED_BY_LABEL == "kube-dispatcher.dev/managed-by"
    assert dispatcher.core.JOB_ID_LABEL == "kube-dispatcher.dev/job-id"
    assert dispatcher.core.ATTEMPT_LABEL == "kube-dispatcher.dev/attempt"
    assert dispatcher.core.IDEMPOTENCY_KEY_ANNOTATION == "kube-dispatcher.dev/idempotency-key"
    assert dispatcher.core.SUBMITTED_AT_ANNOTATION == "kube-dispatcher.dev/submitted-at"
