"""The pure core: task specs, cluster snapshots, routing, pod manifests, outcomes.

Purely computational: no Kubernetes, Vault, HTTP or metrics clients, no clock reads, no
threads, no file or network I/O (import-linter's ``pure-core`` contract enforces it).
Everything here is a function of its arguments; times come in as arguments.

The names below are the public API; modules are importable for their finer details.
"""

from dispatcher.core.outcome import FailureClass, JobPhase, Outcome, classify_pod, parse_result
from dispatcher.core.podspec import (
    ATTEMPT_LABEL,
    CONTAINER_NAME,
    IDEMPOTENCY_KEY_ANNOTATION,
    JOB_ID_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SUBMITTED_AT_ANNOTATION,
    Placement,
    build_pod,
    managed_pods_selector,
    pod_name,
)
from dispatcher.core.routing import (
    ClusterVerdict,
    Decision,
    Reason,
    RoutingPolicy,
    ScoreWeights,
    Strategy,
    Verdict,
    placement_for,
    route,
)
from dispatcher.core.scheduling import PodConstraints, pod_constraints
from dispatcher.core.snapshot import (
    ClusterInfo,
    ClusterRole,
    ClusterState,
    CostTable,
    Health,
    NodeInfo,
    NodeShape,
    Snapshot,
    Taint,
    pod_requests,
    snapshot_from_document,
    usage_by_node,
)
from dispatcher.core.spec import (
    OnFinishAction,
    PodDefaults,
    Requirements,
    TaskSpec,
    Toleration,
    parse_task_spec,
)

__all__ = [
    "ATTEMPT_LABEL",
    "CONTAINER_NAME",
    "IDEMPOTENCY_KEY_ANNOTATION",
    "JOB_ID_LABEL",
    "MANAGED_BY_LABEL",
    "MANAGED_BY_VALUE",
    "SUBMITTED_AT_ANNOTATION",
    "ClusterInfo",
    "ClusterRole",
    "ClusterState",
    "ClusterVerdict",
    "CostTable",
    "Decision",
    "FailureClass",
    "Health",
    "JobPhase",
    "NodeInfo",
    "NodeShape",
    "OnFinishAction",
    "Outcome",
    "Placement",
    "PodConstraints",
    "PodDefaults",
    "Reason",
    "Requirements",
    "RoutingPolicy",
    "ScoreWeights",
    "Snapshot",
    "Strategy",
    "Taint",
    "TaskSpec",
    "Toleration",
    "Verdict",
    "build_pod",
    "classify_pod",
    "managed_pods_selector",
    "parse_result",
    "parse_task_spec",
    "placement_for",
    "pod_constraints",
    "pod_name",
    "pod_requests",
    "route",
    "snapshot_from_document",
    "usage_by_node",
]
