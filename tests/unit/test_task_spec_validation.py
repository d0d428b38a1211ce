"""Task specs use KubernetesPodOperator's field names, are validated as strictly as the
API server would, and every problem points at its field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core import OnFinishAction, TaskSpec, parse_task_spec
from dispatcher.errors import SpecError


def _problems(spec: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_task_spec({"image": "busybox", **spec})
    return {p.field: p.message for p in caught.value.problems}


class TestKubernetesPodOperatorFields:
    def test_a_kpo_style_spec_is_accepted(self) -> None:
        spec = parse_task_spec(
            {
                "name": "train_model",
                "image": "ghcr.io/example/trainer:1.0",
                "cmds": ["python"],
                "arguments": ["-m", "train"],
                "env_vars": {"A": "1"},
                "labels": {"team": "vision"},
                "annotations": {"sim.dispatcher.dev/succeed-after": "3s"},
                "container_resources": {"requests": {"cpu": "2"}, "limits": {"memory": "4Gi"}},
                "image_pull_secrets": "regcred, other",
                "node_selector": {"pool": "batch"},
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
                "service_account_name": "runner",
                "active_deadline_seconds": 3600,
                "on_finish_action": "keep_pod",
                "startup_timeout_seconds": 300,
            }
        )
        assert spec.on_finish_action is OnFinishAction.KEEP_POD
        assert spec.image_pull_secrets == ("regcred", "other")
        assert [(e.name, e.value) for e in spec.env_vars] == [("A", "1")]

    def test_env_vars_may_be_a_list_of_kubernetes_env_vars(self) -> None:
        spec = parse_task_spec(
            {
                "image": "busybox",
                "env_vars": [
                    {"name": "A", "value": "1"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ],
            }
        )
        assert spec.env_vars[1].value_from == {"secretKeyRef": {"name": "s", "key": "k"}}

    def test_image_pull_secrets_may_be_references(self) -> None:
        spec = parse_task_spec({"image": "busybox", "image_pull_secrets": [{"name": "regcred"}]})
        assert spec.image_pull_secrets == ("regcred",)

    def test_a_changed_copy_is_validated_and_recomputed(self) -> None:
        spec = parse_task_spec(
            {"image": "busybox", "container_resources": {"requests": {"cpu": "1"}}}
        )
        assert spec.requests == {"cpu": 1000, "pods": 1}
        assert spec.model_copy(update={"requirements": {"gpus": 2}}).requests == {
            "cpu": 1000,
            "nvidia.com/gpu": 2,
            "pods": 1,
        }
        with pytest.raises(ValueError, match="image"):
            spec.model_copy(update={"image": "has space"})

    def test_spec_survives_its_record_round_trip(self) -> None:
        spec = parse_task_spec(
            {
                "image": "busybox",
                "env_vars": [
                    {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "pool", "operator": "In", "values": ["a"]}
                                    ]
                                }
                            ]
                        }
                    }
                },
                "container_resources": {"limits": {"nvidia.com/gpu": "2"}},
                "requirements": {"gpu_model": "a100", "max_cost_per_hour": 12.5},
                "idempotency_key": "dag/task/run/-1/1",
            }
        )
        # As a job record keeps it (``Job.to_record``/``from_record``).
        kept = spec.model_dump(mode="json", exclude_defaults=True)
        assert TaskSpec.model_validate(kept) == spec


class TestGpuRequirements:
    def test_gpus_asked_the_kpo_way_count_as_a_gpu_requirement(self) -> None:
        spec = parse_task_spec(
            {"image": "busybox", "container_resources": {"limits": {"nvidia.com/gpu": "4"}}}
        )
        assert spec.gpus == 4
        assert spec.requests["nvidia.com/gpu"] == 4

    def test_gpus_asked_in_requirements_are_reserved_too(self) -> None:
        spec = parse_task_spec({"image": "busybox", "requirements": {"gpus": 2}})
        assert spec.requests == {"nvidia.com/gpu": 2, "pods": 1}

    def test_contradicting_gpu_counts_are_refused(self) -> None:
        problems = _problems(
            {
                "requirements": {"gpus": 2},
                "container_resources": {"limits": {"nvidia.com/gpu": "4"}},
            }
        )
        assert "requirements.gpus" in problems

    def test_a_gpu_model_without_gpus_is_refused(self) -> None:
        problems = _problems({"requirements": {"gpu_model": "a100"}})
        assert "needs a GPU count" in problems["requirements.gpu_model"]

    def test_gpus_must_be_whole_and_not_overcommitted(self) -> None:
        problems = _problems(
            {
                "container_resources": {
                    "requests": {"nvidia.com/gpu": "1", "example.com/fpga": "1"},
                    "limits": {"nvidia.com/gpu": "1.5"},
                }
            }
        )
        assert problems["container_resources.limits[nvidia.com/gpu]"] == (
            "nvidia.com/gpu must be a whole number"
        )
        assert "cannot be overcommitted" in problems["container_resources.limits[example.com/fpga]"]


class TestErrorsPointAtTheField:
    def test_every_problem_is_listed_with_its_path(self) -> None:
        problems = _problems(
            {
                "image": "has space",
                "labels": {"bad key!": "v", "ok": "x" * 64},
                "env_vars": [{"name": "1BAD"}],
                "tolerations": [{"operator": "Equal"}],
                "container_resources": {"limits": {"cpu": "lots"}},
                "requirements": {"allowed_clusters": ["Not_A_Name"]},
                "on_finish_action": "explode",
                "unknown_field": 1,
            }
        )
        assert set(problems) == {
            "image",
            "labels[bad key!]",
            "labels.ok",
            "env_vars[0].name",
            "tolerations[0].operator",
            "container_resources.limits.cpu",
            "requirements.allowed_clusters[0]",
            "on_finish_action",
            "unknown_field",
        }
        assert problems["unknown_field"] == "unknown field (check the spelling)"
        assert "must be at most 63 characters" in problems["labels.ok"]

    def test_requests_above_limits_are_refused(self) -> None:
        problems = _problems(
            {"container_resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}
        )
        assert problems == {
            "container_resources.requests[memory]": "must not exceed limits[memory] (1Gi)"
        }

    def test_the_dispatcher_label_prefix_is_reserved(self) -> None:
        problems = _problems({"labels": {"kube-dispatcher.dev/job-id": "mine"}})
        assert "set by the dispatcher" in problems["labels"]

    def test_volume_mounts_must_name_declared_volumes(self) -> None:
        problems = _problems(
            {
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}],
                "volume_mounts": [{"name": "other", "mountPath": "relative"}],
            }
        )
        assert set(problems) == {
            "volumes[1].name",
            "volume_mounts[0].name",
            "volume_mounts[0].mountPath",
        }

    def test_duplicate_env_vars_are_refused(self) -> None:
        problems = _problems(
            {"env_vars": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}
        )
        assert problems == {"env_vars[1].name": "duplicate 'A'"}

    def test_affinity_operators_follow_kubernetes_rules(self) -> None:
        problems = _problems(
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "rank", "operator": "Gt", "values": ["x"]}
                                    ]
                                }
                            ]
                        }
                    }
                }
            }
        )
        (field,) = problems
        assert field.startswith("affinity.nodeAffinity.requiredDuringScheduling")
        assert "one integer value" in problems[field]

    def test_a_spec_that_is_not_a_mapping_is_refused(self) -> None:
        with pytest.raises(SpecError, match="must be a mapping"):
            parse_task_spec(["image", "busybox"])


class TestSizeBounds:
    def test_annotations_are_bounded(self) -> None:
        problems = _problems({"annotations": {"big": "x" * 70_000}})
        assert "at most 65536 allowed" in problems["annotations"]

    def test_env_var_count_is_bounded(self) -> None:
        problems = _problems({"env_vars": {f"V{i}": "x" for i in range(501)}})
        assert "env_vars" in problems

    def test_the_whole_spec_is_bounded_so_it_fits_in_an_annotation(self) -> None:
        problems = _problems({"arguments": ["x" * 1000] * 200})
        assert "at most 131072 allowed" in problems[""]


@given(st.text(min_size=1, max_size=80))
def test_label_values_are_accepted_exactly_when_kubernetes_would(value: str) -> None:
    valid = len(value) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value)
    try:
        parse_task_spec({"image": "busybox", "labels": {"k": value}})
    except SpecError:
        assert not valid
    else:
        assert valid
