"""The Kubernetes objects a task passes through to its pod (affinity, tolerations, env
``valueFrom``, volumes, volume mounts, resources, image, annotations) are refused at
submission, each problem at its field path, whenever the API server (or the kubelet) would
refuse the pod; camelCase and snake_case are the same object, reported at the API's path.

The rules mirror k8s.io/kubernetes pkg/apis/core/validation (v1.35); tests/e2e/
test_bad_input.py checks on a real API server that what is accepted here is accepted there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from kubernetes import client

from dispatcher.core import CONTAINER_NAME, Placement, PodDefaults, build_pod, parse_task_spec
from dispatcher.core.kubeshapes import TASK_CONTAINER, check_image_reference
from dispatcher.errors import SpecError

from .spec_strategies import task_specs

_NOW = datetime(2026, 1, 1, tzinfo=UTC)
POD_AFFINITY = "affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution"


def problems(**fields: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as refused:
        parse_task_spec({"image": "busybox", **fields})
    return {p.field: p.message for p in refused.value.problems}


def accepted(**fields: Any) -> Any:
    return parse_task_spec({"image": "busybox", **fields})


def _term(**fields: Any) -> dict[str, Any]:
    return {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", **fields}


class TestInterPodAffinity:
    def test_a_pod_affinity_term_without_topology_key_is_refused_at_its_path(self) -> None:
        found = problems(
            affinity={
                "podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "db"}}}
                    ]
                }
            }
        )
        assert found == {f"{POD_AFFINITY}[0].topologyKey": "field required"}

    def test_snake_case_affinity_is_reported_at_the_same_api_path(self) -> None:
        found = problems(
            affinity={
                "pod_affinity": {
                    "required_during_scheduling_ignored_during_execution": [
                        {"label_selector": {"match_labels": {"app": "db"}}}
                    ]
                }
            }
        )
        assert found == {f"{POD_AFFINITY}[0].topologyKey": "field required"}

    def test_malformed_pod_affinity_shapes_are_refused_whole(self) -> None:
        found = problems(
            affinity={
                "podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        _term(topologyKey="not a key!"),
                        _term(labelSelector={"matchExpressions": [{"key": "a", "operator": "Is"}]}),
                        "not-an-object",
                    ],
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 0, "podAffinityTerm": _term()},
                        {"weight": 50, "podAffinityTerm": _term(), "typo": 1},
                    ],
                },
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"x": 1}},
            }
        )
        assert set(found) == {
            f"{POD_AFFINITY}[0].topologyKey",
            f"{POD_AFFINITY}[1].labelSelector.matchExpressions[0].operator",
            f"{POD_AFFINITY}[2]",
            "affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
            "affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[1].typo",
            "affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution",
        }
        assert found[
            "affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[1].typo"
        ] == ("unknown field (check the spelling)")

    def test_label_selector_operators_follow_their_values(self) -> None:
        found = problems(
            affinity={
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        _term(
                            labelSelector={
                                "matchExpressions": [
                                    {"key": "a", "operator": "In"},
                                    {"key": "b", "operator": "Exists", "values": ["x"]},
                                    {"key": "c", "operator": "In", "values": ["-bad-"]},
                                ]
                            }
                        )
                    ]
                }
            }
        )
        base = "affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
        assert set(found) == {
            f"{base}.labelSelector.matchExpressions[0].values",
            f"{base}.labelSelector.matchExpressions[1].values",
            f"{base}.labelSelector.matchExpressions[2].values[0]",
        }

    def test_match_label_keys_cannot_duplicate_the_selector(self) -> None:
        found = problems(
            affinity={
                "podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "zone", "matchLabelKeys": ["app"]},
                        _term(matchLabelKeys=["app", "tier", "tier"], mismatchLabelKeys=["tier"]),
                    ]
                }
            }
        )
        assert found == {
            f"{POD_AFFINITY}[0].matchLabelKeys": "must not be set when labelSelector is not set",
            f"{POD_AFFINITY}[1].matchLabelKeys[0]": "'app' is also in labelSelector",
            f"{POD_AFFINITY}[1].matchLabelKeys[1]": "'tier' is also in mismatchLabelKeys",
            f"{POD_AFFINITY}[1].matchLabelKeys[2]": "duplicate 'tier'",
        }

    def test_a_well_formed_pod_affinity_reaches_the_pod_in_api_form(self) -> None:
        spec = accepted(
            affinity={
                "pod_anti_affinity": {
                    "preferred_during_scheduling_ignored_during_execution": [
                        {
                            "weight": 100,
                            "pod_affinity_term": {
                                "label_selector": {},
                                "topology_key": "kubernetes.io/hostname",
                                "namespaces": ["team-a"],
                            },
                        }
                    ]
                }
            }
        )
        pod = build_pod(spec, Placement("c"), job_id="j", attempt=0, submitted_at=_NOW)
        assert pod["spec"]["affinity"] == {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        # An empty selector matches every pod; it must not be dropped.
                        "podAffinityTerm": {
                            "labelSelector": {},
                            "topologyKey": "kubernetes.io/hostname",
                            "namespaces": ["team-a"],
                        },
                    }
                ]
            }
        }


class TestNodeAffinity:
    def test_preferred_terms_have_weights_and_valid_requirements(self) -> None:
        base = "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution"
        found = problems(
            affinity={
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 101, "preference": {}},
                        {"weight": 1},
                        {
                            "weight": 1,
                            "preference": {
                                "matchFields": [
                                    {"key": "metadata.name", "operator": "In", "values": ["A_B"]}
                                ]
                            },
                        },
                    ]
                }
            }
        )
        assert set(found) == {
            f"{base}[0].weight",
            f"{base}[1].preference",
            f"{base}[2].preference.matchFields[0].values[0]",
        }

    def test_required_values_must_be_label_values_even_for_numbers(self) -> None:
        # Gt -1 is refused by the API server: '-1' is not a label value.
        found = problems(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "rank", "operator": "Gt", "values": ["-1"]}
                                ]
                            }
                        ]
                    }
                }
            }
        )
        (field,) = found
        assert field.endswith("nodeSelectorTerms[0].matchExpressions[0].values[0]")


class TestTolerations:
    @pytest.mark.parametrize("operator", ["exists", "Lt", "Gt", ""])
    def test_an_unknown_operator_is_refused(self, operator: str) -> None:
        found = problems(tolerations=[{"key": "k", "operator": operator}])
        assert set(found) == {"tolerations[0].operator"}

    def test_toleration_rules_follow_the_api_server(self) -> None:
        found = problems(
            tolerations=[
                {"key": "k", "operator": "Equal", "value": "not a value"},
                {"key": "k", "operator": "Exists", "value": "v"},
                {"operator": "Equal"},
                {"key": "k", "operator": "Exists", "tolerationSeconds": 10},
                {
                    "key": "k",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 2**63,
                },
            ]
        )
        assert set(found) == {
            "tolerations[0].value",
            "tolerations[1].value",
            "tolerations[2].operator",
            "tolerations[3].tolerationSeconds",
            "tolerations[4].tolerationSeconds",
        }


class TestVolumes:
    def test_a_volume_with_two_sources_is_refused(self) -> None:
        found = problems(volumes=[{"name": "v", "emptyDir": {}, "secret": {"secretName": "s"}}])
        assert found == {
            "volumes[0].secret": "a volume has exactly one source; this one also sets emptyDir"
        }

    def test_a_volume_without_a_source_is_refused(self) -> None:
        found = problems(volumes=[{"name": "v"}])
        assert "needs a volume source" in found["volumes[0]"]

    @pytest.mark.parametrize("kind", ["hostPath", "host_path", "gcePersistentDisk", "ephemeral"])
    def test_node_and_cloud_bound_volume_types_are_refused_with_a_reason(self, kind: str) -> None:
        found = problems(volumes=[{"name": "v", kind: {"path": "/x"}}])
        ((field, message),) = found.items()
        assert field.startswith("volumes[0].")
        assert "is not supported" in message

    def test_volume_sources_follow_the_api_server(self) -> None:
        found = problems(
            volumes=[
                {"name": "a", "secret": {}},
                {"name": "b", "configMap": {"name": "c", "items": [{"key": "k", "path": "/abs"}]}},
                {
                    "name": "c",
                    "configMap": {"name": "c", "items": [{"key": "k", "path": "a/../b"}]},
                },
                {"name": "d", "secret": {"secretName": "s", "defaultMode": 0o1000}},
                {"name": "e", "emptyDir": {"sizeLimit": "-1Gi"}},
                {"name": "f", "emptyDir": {"medium": "HugePages"}},
                {"name": "g", "nfs": {"server": "nfs", "path": "relative"}},
                {"name": "h", "csi": {"driver": "not_a_driver!"}},
                {"name": "i", "persistentVolumeClaim": {"claimName": "Bad_Name"}},
                {"name": "Upper", "emptyDir": {}},
            ]
        )
        assert set(found) == {
            "volumes[0].secret.secretName",
            "volumes[1].configMap.items[0].path",
            "volumes[2].configMap.items[0].path",
            "volumes[3].secret.defaultMode",
            "volumes[4].emptyDir.sizeLimit",
            "volumes[5].emptyDir.medium",
            "volumes[6].nfs.path",
            "volumes[7].csi.driver",
            "volumes[8].persistentVolumeClaim.claimName",
            "volumes[9].name",
        }

    def test_projected_and_downward_api_volumes_follow_the_api_server(self) -> None:
        found = problems(
            volumes=[
                {
                    "name": "p",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 60}},
                            {"secret": {"name": "s", "items": [{"key": "k", "path": "token"}]}},
                            {"secret": {"name": "s"}, "configMap": {"name": "c"}},
                        ]
                    },
                },
                {
                    "name": "d",
                    "downwardAPI": {
                        "items": [
                            {"path": "phase", "fieldRef": {"fieldPath": "status.phase"}},
                            {"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}},
                            {"path": "none"},
                        ]
                    },
                },
            ]
        )
        assert set(found) == {
            "volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds",
            "volumes[0].projected.sources[2]",
            "volumes[1].downwardAPI.items[0].fieldRef.fieldPath",
            "volumes[1].downwardAPI.items[1].resourceFieldRef.containerName",
            "volumes[1].downwardAPI.items[2]",
        }

    def test_projected_sources_may_not_write_the_same_path(self) -> None:
        found = problems(
            volumes=[
                {
                    "name": "p",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token"}},
                            {"secret": {"name": "s", "items": [{"key": "k", "path": "token"}]}},
                        ]
                    },
                }
            ]
        )
        assert found == {
            "volumes[0].projected.sources[1].secret.items[0].path": "duplicate path 'token'"
        }

    def test_a_projected_token_needs_a_named_service_account(self) -> None:
        volumes = [
            {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
        ]
        assert problems(volumes=volumes) == {
            "volumes[0].projected.sources[0].serviceAccountToken": (
                "needs service_account_name: the token is that service account's"
            )
        }
        assert accepted(volumes=volumes, service_account_name="runner").volumes

    def test_snake_case_volumes_reach_the_pod_in_api_form(self) -> None:
        spec = accepted(
            volumes=[
                {
                    "name": "d",
                    "downward_api": {
                        "items": [{"path": "n", "field_ref": {"field_path": "metadata.name"}}]
                    },
                }
            ],
            volume_mounts=[{"name": "d", "mount_path": "/etc/pod", "read_only": True}],
        )
        pod = build_pod(spec, Placement("c"), job_id="j", attempt=0, submitted_at=_NOW)
        assert pod["spec"]["volumes"] == [
            {
                "name": "d",
                "downwardAPI": {
                    "items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]
                },
            }
        ]
        assert pod["spec"]["containers"][0]["volumeMounts"] == [
            {"name": "d", "mountPath": "/etc/pod", "readOnly": True}
        ]

    def test_a_field_given_in_both_spellings_is_refused(self) -> None:
        found = problems(
            volumes=[{"name": "v", "emptyDir": {}}],
            volume_mounts=[{"name": "v", "mountPath": "/a", "mount_path": "/b"}],
        )
        assert "given twice" in found["volume_mounts[0].mountPath"]


class TestVolumeMounts:
    def test_mount_rules_follow_the_api_server(self) -> None:
        found = problems(
            volumes=[{"name": "v", "emptyDir": {}}],
            volume_mounts=[
                {"name": "v", "mountPath": "/a", "subPath": "../escape"},
                {"name": "v", "mountPath": "/b", "subPath": "x", "subPathExpr": "$(X)"},
                {"name": "v", "mountPath": "/c", "mountPropagation": "Bidirectional"},
                {"name": "v", "mountPath": "/d", "recursiveReadOnly": "Enabled"},
                {"name": "v", "mountPath": "/a"},
                {"name": "missing", "mountPath": "/e"},
            ],
        )
        assert set(found) == {
            "volume_mounts[0].subPath",
            "volume_mounts[1].subPathExpr",
            "volume_mounts[2].mountPropagation",
            "volume_mounts[3].recursiveReadOnly",
            "volume_mounts[4].mountPath",
            "volume_mounts[5].name",
        }


class TestEnvironment:
    def test_value_from_follows_the_api_server(self) -> None:
        found = problems(
            env_vars=[
                {"name": "A", "valueFrom": {}},
                {
                    "name": "B",
                    "valueFrom": {
                        "secretKeyRef": {"name": "s", "key": "k"},
                        "configMapKeyRef": {"name": "c", "key": "k"},
                    },
                },
                {
                    "name": "C",
                    "value": "x",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                },
                {"name": "D", "valueFrom": {"secretKeyRef": {"name": "s", "key": "no/slash"}}},
                {"name": "E", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}},
                {
                    "name": "F",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['bad key']"}},
                },
                {
                    "name": "G",
                    "valueFrom": {"fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}},
                },
                {
                    "name": "H",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1Mi"}},
                },
                {"name": "I", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}},
                {"name": "..", "value": "x"},
            ]
        )
        assert set(found) == {
            "env_vars[0].valueFrom",
            "env_vars[1].valueFrom",
            "env_vars[2].valueFrom",
            "env_vars[3].valueFrom.secretKeyRef.key",
            "env_vars[4].valueFrom.fieldRef.fieldPath",
            "env_vars[5].valueFrom.fieldRef.fieldPath",
            "env_vars[6].valueFrom.fieldRef.apiVersion",
            "env_vars[7].valueFrom.resourceFieldRef.divisor",
            "env_vars[8].valueFrom.resourceFieldRef.resource",
            "env_vars[9].name",
        }

    def test_value_from_reaches_the_pod_in_api_form(self) -> None:
        spec = accepted(
            env_vars=[
                {"name": "NODE", "value_from": {"field_ref": {"field_path": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            ]
        )
        pod = build_pod(spec, Placement("c"), job_id="j", attempt=0, submitted_at=_NOW)
        assert pod["spec"]["containers"][0]["env"] == [
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ]


class TestContainer:
    @pytest.mark.parametrize(
        "image",
        [
            "busybox",
            "python:3.12",
            "ghcr.io/org/team/app:v1.2-rc_3",
            "localhost:5000/app",
            "Registry.Example.com:443/a/b@sha256:" + "a" * 64,
            "app:latest@sha256:" + "0" * 64,
            "[::1]:5000/app",
        ],
    )
    def test_image_references_the_kubelet_parses_are_accepted(self, image: str) -> None:
        assert check_image_reference(image) == image

    @pytest.mark.parametrize(
        "image",
        [
            "Busybox",
            "org/App:1",
            "app:",
            "app:-tag",
            "app@sha256:abc",
            "app@md5:" + "a" * 32,
            "app@sha256:" + "A" * 64,
            "a" * 64,
            "app:" + "t" * 129,
            "has space",
            "a//b",
            "-app",
        ],
    )
    def test_image_references_the_kubelet_refuses_are_refused(self, image: str) -> None:
        assert set(problems(image=image)) == {"image"}

    def test_container_resources_follow_the_api_server(self) -> None:
        found = problems(
            container_resources={
                "requests": {
                    "foo": "1",
                    "requests.example.com/x": "1",
                    "hugepages-2Mi": "1Mi",
                    "hugepages-huge": "2Mi",
                },
                "limits": {"hugepages-2Mi": "2Mi"},
            }
        )
        assert set(found) == {
            "container_resources.requests[foo]",
            "container_resources.requests[requests.example.com/x]",
            "container_resources.requests[hugepages-2Mi]",
            "container_resources.requests[hugepages-huge]",
            "container_resources",
        }
        assert "hugepages need a cpu or memory" in found["container_resources"]

    def test_annotations_the_api_server_reads_are_refused(self) -> None:
        found = problems(
            annotations={
                "scheduler.alpha.kubernetes.io/tolerations": "[]",
                "container.apparmor.security.beta.kubernetes.io/base": "unconfined",
                "controller.kubernetes.io/pod-deletion-cost": "1e3",
                "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
            }
        )
        assert set(found) == {
            "annotations[scheduler.alpha.kubernetes.io/tolerations]",
            "annotations[container.apparmor.security.beta.kubernetes.io/base]",
            "annotations[controller.kubernetes.io/pod-deletion-cost]",
        }

    def test_resource_references_name_the_dispatched_container(self) -> None:
        assert TASK_CONTAINER == CONTAINER_NAME


def test_every_problem_is_listed_at_once_even_across_fields() -> None:
    found = problems(
        image="Bad",
        tolerations=[{"key": "k", "operator": "exists"}],
        affinity={"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}},
        volumes=[{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
        volume_mounts=[{"name": "w", "mountPath": "tmp"}],
        env_vars=[{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}],
    )
    assert set(found) == {
        "image",
        "tolerations[0].operator",
        f"{POD_AFFINITY}[0].topologyKey",
        "volumes[1].name",
        "volume_mounts[0].name",
        "volume_mounts[0].mountPath",
        "env_vars[0].valueFrom.secretKeyRef.key",
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_specs())
def test_generated_specs_are_accepted_and_keep_their_api_form(document: dict[str, Any]) -> None:
    # The strategies produce what Kubernetes accepts (checked against a real API server in
    # tests/e2e/test_bad_input.py): the dispatcher must accept all of it, and its canonical
    # form must survive a round trip unchanged (camelCase and snake_case alike).
    spec = parse_task_spec(document)
    assert parse_task_spec(spec.model_dump()) == spec
    pod = build_pod(spec, Placement("c", PodDefaults()), job_id="j", attempt=0, submitted_at=_NOW)
    container = pod["spec"]["containers"][0]
    assert all("_" not in key for mount in container.get("volumeMounts", ()) for key in mount)
    # The kubernetes client (37.x, pydantic models) validates a body against its own
    # models before sending it (a malformed podAffinity once failed there, outside any API
    # error handling); 36.x and older send a dict body as it is.
    if hasattr(client.V1Pod, "from_dict"):
        client.V1Pod.from_dict(pod)
