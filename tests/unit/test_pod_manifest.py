"""The pod built for a task carries its identity for reattach, the cluster's defaults,
and exactly the scheduling constraints routing judged."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core import (
    ATTEMPT_LABEL,
    IDEMPOTENCY_KEY_ANNOTATION,
    JOB_ID_LABEL,
    MANAGED_BY_LABEL,
    SUBMITTED_AT_ANNOTATION,
    Placement,
    PodDefaults,
    TaskSpec,
    build_pod,
    managed_pods_selector,
    pod_name,
)

from .factories import GPU_TOLERATION, gpu_task, task

NOW = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
DEFAULTS = PodDefaults.model_validate(
    {
        "namespace": "batch",
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "gpu_tolerations": [GPU_TOLERATION],
        "node_selector": {"pool": "batch"},
        "priority_class_name": "batch-low",
        "image_pull_secrets": ["cluster-regcred"],
        "labels": {"cost-center": "ml"},
        "annotations": {"cluster.example.com/note": "x"},
    }
)
PLACEMENT = Placement(cluster="gpu-a100", defaults=DEFAULTS)


def _build(spec: TaskSpec, placement: Placement = PLACEMENT, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("job_id", "j-123")
    kwargs.setdefault("attempt", 0)
    kwargs.setdefault("submitted_at", NOW)
    return build_pod(spec, placement, **kwargs)


class TestIdentity:
    def test_labels_identify_the_job_and_attempt(self) -> None:
        labels = _build(task(), attempt=2)["metadata"]["labels"]
        assert labels[MANAGED_BY_LABEL] == "kube-dispatcher"
        assert labels[JOB_ID_LABEL] == "j-123"
        assert labels[ATTEMPT_LABEL] == "2"
        assert managed_pods_selector() == "kube-dispatcher.dev/managed-by=kube-dispatcher"

    def test_annotations_tie_the_pod_to_its_job_and_carry_no_task_values(self) -> None:
        spec = task(
            idempotency_key="train/step/run-1/-1/1",
            cmds=["sh"],
            env_vars=[{"name": "TOKEN", "value": "s3cret-literal"}],
        )
        metadata = _build(spec)["metadata"]
        annotations = metadata["annotations"]
        assert annotations[IDEMPOTENCY_KEY_ANNOTATION] == "train/step/run-1/-1/1"
        assert annotations[SUBMITTED_AT_ANNOTATION] == "2025-03-01T12:30:00Z"
        # The record (written before the pod) holds the spec; a literal env value, often
        # a credential, is in the container's env only, never in the pod's metadata.
        assert "s3cret-literal" not in json.dumps(metadata)
        assert "kube-dispatcher.dev/task-spec" not in annotations

    def test_submitted_at_is_written_in_utc_and_must_be_timezone_aware(self) -> None:
        paris = datetime(2025, 3, 1, 13, 30, tzinfo=timezone(timedelta(hours=1)))
        annotations = _build(task(), submitted_at=paris)["metadata"]["annotations"]
        assert annotations[SUBMITTED_AT_ANNOTATION] == "2025-03-01T12:30:00Z"
        with pytest.raises(ValueError, match="timezone-aware"):
            _build(task(), submitted_at=datetime(2025, 3, 1))

    def test_job_id_must_be_a_valid_label_value(self) -> None:
        with pytest.raises(ValueError, match="label value"):
            _build(task(), job_id="not a label")

    def test_the_same_attempt_gets_the_same_name_and_another_attempt_another(self) -> None:
        spec = task(name="train_model")
        assert _build(spec)["metadata"]["name"] == _build(spec)["metadata"]["name"]
        assert _build(spec)["metadata"]["name"] != _build(spec, attempt=1)["metadata"]["name"]
        assert _build(spec)["metadata"]["name"].startswith("train-model-")

    @given(st.text(max_size=300), st.text(min_size=1, max_size=63), st.integers(0, 10**6))
    def test_pod_names_are_always_valid_rfc1123_labels(
        self, name: str, job_id: str, attempt: int
    ) -> None:
        generated = pod_name(name, job_id, attempt)
        assert len(generated) <= 63
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", generated)

    def test_user_labels_and_annotations_pass_through(self) -> None:
        spec = task(labels={"team": "vision"}, annotations={"sim.dispatcher.dev/fail-after": "2s"})
        metadata = _build(spec)["metadata"]
        assert metadata["labels"]["team"] == "vision"
        assert metadata["labels"]["cost-center"] == "ml"
        assert metadata["annotations"]["sim.dispatcher.dev/fail-after"] == "2s"
        assert metadata["annotations"]["cluster.example.com/note"] == "x"


class TestContainer:
    def test_container_follows_kubernetes_pod_operator(self) -> None:
        spec = task(
            cmds=["python"],
            arguments=["-c", "1"],
            env_vars={"A": "1"},
            container_resources={"requests": {"cpu": "500m"}, "limits": {"memory": "3Gi"}},
            image_pull_policy="Always",
            volumes=[{"name": "data", "emptyDir": {}}],
            volume_mounts=[{"name": "data", "mountPath": "/data"}],
        )
        pod = _build(spec)
        assert pod["spec"]["restartPolicy"] == "Never"
        (container,) = pod["spec"]["containers"]
        assert container == {
            "name": "base",
            "image": "busybox:1.36",
            "command": ["python"],
            "args": ["-c", "1"],
            "env": [{"name": "A", "value": "1"}],
            "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "3Gi"}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "imagePullPolicy": "Always",
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        assert pod["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]

    def test_gpus_asked_in_requirements_become_a_gpu_limit(self) -> None:
        pod = _build(task(requirements={"gpus": 2}))
        assert pod["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "2"}}

    def test_the_manifest_is_plain_json(self) -> None:
        pod = _build(
            gpu_task(
                2,
                "a100",
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "a", "operator": "Exists"}]}
                            ]
                        }
                    }
                },
            )
        )
        assert json.loads(json.dumps(pod)) == pod


class TestClusterDefaults:
    def test_gpu_tolerations_are_added_only_to_gpu_tasks(self) -> None:
        cpu_tolerations = _build(task())["spec"]["tolerations"]
        gpu_tolerations = _build(gpu_task(1))["spec"]["tolerations"]
        assert cpu_tolerations == [{"key": "spot", "operator": "Exists"}]
        assert gpu_tolerations == [
            {"key": "spot", "operator": "Exists"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ]

    def test_task_tolerations_come_first_without_duplicates(self) -> None:
        spec = task(
            tolerations=[
                {"key": "spot", "operator": "Exists"},
                {"key": "own", "operator": "Exists"},
            ]
        )
        keys = [t["key"] for t in _build(spec)["spec"]["tolerations"]]
        assert keys == ["spot", "own"]

    def test_defaults_fill_what_the_task_leaves_open(self) -> None:
        spec = _build(task(node_selector={"disk": "ssd"}, image_pull_secrets=["mine"]))["spec"]
        assert spec["nodeSelector"] == {"disk": "ssd", "pool": "batch"}
        assert spec["priorityClassName"] == "batch-low"
        assert spec["imagePullSecrets"] == [{"name": "mine"}, {"name": "cluster-regcred"}]

    def test_the_task_namespace_is_used_only_where_the_cluster_allows_it(self) -> None:
        spec = task(namespace="team-a")
        allowing = Placement("c", DEFAULTS.model_copy(update={"allowed_namespaces": ("team-a",)}))
        assert _build(spec)["metadata"]["namespace"] == "batch"
        assert _build(spec, allowing)["metadata"]["namespace"] == "team-a"

    def test_gpu_model_pins_are_anded_with_the_task_affinity(self) -> None:
        spec = gpu_task(
            1,
            "a100",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["a"]}
                                ]
                            },
                            {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["b"]}
                                ]
                            },
                        ]
                    }
                }
            },
        )
        placement = Placement(
            "c",
            DEFAULTS,
            {
                "nvidia.com/gpu.product": ("NVIDIA-A100-SXM4-80GB",),
                "cloud.google.com/gke-accelerator": ("nvidia-tesla-a100",),
            },
        )
        terms = _build(spec, placement)["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert len(terms) == 4
        assert {
            (t["matchExpressions"][0]["values"][0], t["matchExpressions"][1]["key"]) for t in terms
        } == {
            ("a", "cloud.google.com/gke-accelerator"),
            ("a", "nvidia.com/gpu.product"),
            ("b", "cloud.google.com/gke-accelerator"),
            ("b", "nvidia.com/gpu.product"),
        }
