"""A cluster's copy policy: routing treats a missing Secret or ConfigMap the policy can bring
there (from the in-plane task namespace, or Vault) as satisfiable and says from where; PVCs
and ServiceAccounts are never copied; registry credentials add a pull Secret to the pod of
a task whose image comes from that registry. The copies' shape carries no source metadata
and no digest of the values."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.core import ClusterRole, ClusterState, NodeInfo, Reason, Verdict, route
from dispatcher.core.copies import (
    COPY_LABEL,
    SOURCE_VERSION_ANNOTATION,
    USED_BY_ANNOTATION,
    CopyPolicy,
    Registry,
    VaultObject,
    copy_manifest,
    image_registry,
    is_copy,
    users,
    with_users,
)
from dispatcher.core.dependencies import DependencyKind, NamespaceView
from dispatcher.core.podspec import build_pod
from dispatcher.core.routing import placement_for
from dispatcher.errors import ConfigError
from dispatcher.settings import load_settings

from .factories import A100, gpu_node, info, snapshot, task

SECRET = DependencyKind.SECRET
CONFIG_MAP = DependencyKind.CONFIG_MAP
PVC = DependencyKind.PERSISTENT_VOLUME_CLAIM
GPU = {"limits": {"nvidia.com/gpu": "1"}}
EVERYTHING_FROM_PLANE = CopyPolicy(from_plane={SECRET: ("*",), CONFIG_MAP: ("*",)})
GHCR = Registry("ghcr.io", "secret", "registries/ghcr")


def _view(**objects: dict[str, frozenset[str]]) -> NamespaceView:
    kinds = {"secrets": SECRET, "configmaps": CONFIG_MAP, "pvcs": PVC}
    return NamespaceView(objects={kinds[k]: v for k, v in objects.items()})


EMPTY = _view(secrets={}, configmaps={}, pvcs={})


def _gpu(view: NamespaceView | None, policy: CopyPolicy | None = None) -> ClusterState:
    return ClusterState.build(
        dataclasses.replace(
            info("gpu-a100", gpu_prices={A100: 1.0}, namespace="batch"),
            copies=policy or CopyPolicy(),
        ),
        nodes=[NodeInfo.from_k8s(gpu_node("gpu-a100-0", model=A100))],
        objects=None if view is None else {"batch": view},
    )


def _plane(view: NamespaceView | None) -> ClusterState:
    # No GPU nodes: it can never run the GPU task itself, only be the copies' source.
    return ClusterState.build(
        info("plane", role=ClusterRole.IN_PLANE, namespace="batch"),
        objects=None if view is None else {"batch": view},
    )


def _needs_regcred_and_cfg(**extra: Any) -> Any:
    return task(
        container_resources=GPU,
        image_pull_secrets="regcred",
        env_vars=[{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}],
        env_from=[{"configMapRef": {"name": "settings"}}],
        **extra,
    )


PLANE_HAS_THEM = _view(
    secrets={"regcred": frozenset({".dockerconfigjson"}), "db": frozenset({"pw"})},
    configmaps={"settings": frozenset({"mode"})},
)


def test_missing_objects_the_policy_copies_from_the_plane_namespace_are_satisfiable() -> None:
    decision = route(
        _needs_regcred_and_cfg(),
        snapshot(_plane(PLANE_HAS_THEM), _gpu(EMPTY, EVERYTHING_FROM_PLANE)),
    )
    assert (decision.verdict, decision.cluster) == (Verdict.PLACE, "gpu-a100")
    report = decision.explain("gpu-a100").dependencies  # type: ignore[union-attr]
    assert report is not None
    assert report.missing == ()
    assert sorted((r.name, why) for r, why in report.would_copy) == [
        ("db", "would be copied from plane namespace batch"),
        ("regcred", "would be copied from plane namespace batch"),
        ("settings", "would be copied from plane namespace batch"),
    ]
    explained = decision.to_dict()["clusters"]
    gpu = next(c for c in explained if c["cluster"] == "gpu-a100")
    assert {w["name"] for w in gpu["dependencies"]["would_copy"]} == {"db", "regcred", "settings"}


def test_without_a_copy_policy_the_same_task_is_rejected_naming_each_object() -> None:
    decision = route(_needs_regcred_and_cfg(), snapshot(_plane(PLANE_HAS_THEM), _gpu(EMPTY)))
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert (verdict.verdict, verdict.reason) == (Verdict.REJECT, Reason.DEPENDENCY_MISSING)
    assert verdict.message == (
        "ConfigMap settings not in namespace batch; Secret db not in namespace batch; "
        "Secret regcred not in namespace batch"
    )


def test_a_policy_copies_only_the_names_it_lists() -> None:
    only_regcred = CopyPolicy(from_plane={SECRET: ("reg*",)})
    decision = route(
        _needs_regcred_and_cfg(), snapshot(_plane(PLANE_HAS_THEM), _gpu(EMPTY, only_regcred))
    )
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert verdict.dependencies is not None
    assert verdict.verdict is Verdict.REJECT
    assert [r.name for r, _ in verdict.dependencies.would_copy] == ["regcred"]
    assert "Secret regcred" not in verdict.message
    assert "Secret db not in namespace batch" in verdict.message


def test_a_source_without_the_object_or_the_key_cannot_be_copied_and_says_so() -> None:
    plane = _view(secrets={"db": frozenset({"user"})}, configmaps={})
    decision = route(
        _needs_regcred_and_cfg(), snapshot(_plane(plane), _gpu(EMPTY, EVERYTHING_FROM_PLANE))
    )
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert verdict.verdict is Verdict.REJECT
    assert verdict.message == (
        "ConfigMap settings not in namespace batch, nor in plane namespace batch to copy it "
        "from; Secret db not in namespace batch, and its copy source in plane namespace batch "
        "has no key pw; Secret regcred not in namespace batch, nor in plane namespace batch "
        "to copy it from"
    )


def test_an_unlisted_source_makes_the_cluster_wait_not_reject() -> None:
    decision = route(
        _needs_regcred_and_cfg(), snapshot(_plane(None), _gpu(EMPTY, EVERYTHING_FROM_PLANE))
    )
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert (verdict.verdict, verdict.reason) == (Verdict.WAIT, Reason.DEPENDENCIES_UNKNOWN)
    assert "whether plane namespace batch has it to copy is not known yet" in verdict.message


def test_a_pvc_is_never_copied_whatever_the_policy() -> None:
    spec = task(
        container_resources=GPU,
        volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "dataset-a"}}],
        volume_mounts=[{"name": "d", "mountPath": "/d"}],
    )
    plane = _view(secrets={}, configmaps={}, pvcs={"dataset-a": frozenset()})
    policy = CopyPolicy(from_plane={SECRET: ("*",), CONFIG_MAP: ("*",), PVC: ("*",)})
    assert not policy.may_copy(PVC, "dataset-a")
    verdict = route(spec, snapshot(_plane(plane), _gpu(EMPTY, policy))).explain("gpu-a100")
    assert verdict is not None
    assert verdict.message == "PersistentVolumeClaim dataset-a not in namespace batch"


def test_vault_sourced_objects_are_satisfiable_for_the_keys_they_list() -> None:
    policy = CopyPolicy(
        from_vault=(VaultObject(SECRET, "db", "secret", "tasks/db", ("pw",)),),
        from_plane={SECRET: ("regcred",), CONFIG_MAP: ("*",)},
    )
    decision = route(
        _needs_regcred_and_cfg(), snapshot(_plane(PLANE_HAS_THEM), _gpu(EMPTY, policy))
    )
    report = decision.explain("gpu-a100").dependencies  # type: ignore[union-attr]
    assert report is not None
    assert {r.name: why for r, why in report.would_copy}["db"] == (
        "would be copied from Vault KV secret/tasks/db"
    )
    other_key = CopyPolicy(from_vault=(VaultObject(SECRET, "db", "secret", "tasks/db", ("x",)),))
    spec = task(
        container_resources=GPU,
        env_vars=[{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}],
    )
    verdict = route(spec, snapshot(_gpu(EMPTY, other_key))).explain("gpu-a100")
    assert verdict is not None
    assert verdict.verdict is Verdict.REJECT
    assert verdict.message == (
        "Secret db not in namespace batch, nor a key of its Vault KV source secret/tasks/db"
    )


@pytest.mark.parametrize(
    ("image", "host", "matches"),
    [
        ("ghcr.io/acme/train:1.2", "ghcr.io", True),
        ("ghcr.io/acme/train@sha256:" + "a" * 64, "ghcr.io", True),
        ("ghcr.io.evil.example/acme/train", "ghcr.io.evil.example", False),
        ("busybox:1.36", "docker.io", False),
        ("localhost:5000/x", "localhost:5000", False),
        ("acme/train", "docker.io", False),
    ],
)
def test_registries_match_images_by_host_and_path(image: str, host: str, matches: bool) -> None:
    assert image_registry(image) == host
    assert GHCR.matches(image) is matches


def test_a_registry_path_prefix_matches_only_under_it() -> None:
    team = Registry("ghcr.io/acme", "secret", "r")
    assert team.matches("ghcr.io/acme/train:1")
    assert not team.matches("ghcr.io/acme-other/train:1")
    hub = Registry("docker.io", "secret", "r")
    assert hub.matches("busybox:1.36")
    assert hub.matches("acme/train")


def test_a_task_from_a_declared_registry_gets_its_pull_secret_without_naming_one() -> None:
    policy = CopyPolicy(registries=(GHCR,))
    spec = task(container_resources=GPU, image="ghcr.io/acme/train:1")
    state = _gpu(EMPTY, policy)
    decision = route(spec, snapshot(state))
    assert decision.verdict is Verdict.PLACE
    report = decision.explain("gpu-a100").dependencies  # type: ignore[union-attr]
    assert report is not None
    assert [(r.name, why) for r, why in report.would_copy] == [
        (GHCR.secret_name, "would be copied from Vault KV secret/registries/ghcr")
    ]
    pod = build_pod(
        spec,
        placement_for(spec, state),
        job_id="j1",
        attempt=1,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert pod["spec"]["imagePullSecrets"] == [{"name": GHCR.secret_name}]
    assert GHCR.secret_name.startswith("kd-registry-ghcr-io-")
    other = task(container_resources=GPU, image="quay.io/acme/train:1")
    assert placement_for(other, state).pull_secrets == ()


def test_a_copy_carries_values_and_bookkeeping_but_none_of_the_sources_metadata() -> None:
    source = {
        "metadata": {
            "name": "db",
            "namespace": "batch",
            "labels": {"team": "x"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
            "resourceVersion": "41",
            "uid": "u",
        },
        "data": {"pw": "czNjcjN0"},
        "type": "Opaque",
    }
    body = copy_manifest(
        SECRET,
        "db",
        "batch",
        content=source,
        origin="plane/batch/db",
        version="41",
        job_ids=("j2", "j1", "j1"),
    )
    assert body["metadata"] == {
        "name": "db",
        "namespace": "batch",
        "labels": {COPY_LABEL: "true"},
        "annotations": {
            "kube-dispatcher.dev/copy-source": "plane/batch/db",
            SOURCE_VERSION_ANNOTATION: "41",
            USED_BY_ANNOTATION: "j1,j2",
        },
    }
    assert body["data"] == {"pw": "czNjcjN0"}
    assert body["type"] == "Opaque"
    assert is_copy(body)
    assert users(body) == {"j1", "j2"}
    assert users(with_users(body, {"j3"})) == {"j3"}
    assert not is_copy(source)
    with pytest.raises(ValueError, match="never copied"):
        copy_manifest(PVC, "d", "batch", content={}, origin="", version="", job_ids=())


def _settings_problems(tmp_path: Path, gpu: dict[str, Any], *, vault: bool = False) -> list[str]:
    data: dict[str, Any] = {
        "clusters": [
            {"name": "plane", "role": "in-plane", "credentials": {"in_cluster": True}},
            {"name": "gpu", "credentials": {"kubeconfig_file": {"path": "/k"}}, **gpu},
        ]
    }
    if vault:
        data["vault"] = {"url": "https://vault.example:8200", "auth": {"token": {"token": "t"}}}
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_settings(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_copy_settings_are_validated_field_by_field(tmp_path: Path) -> None:
    assert _settings_problems(
        tmp_path,
        {"registries": [{"server": "https://ghcr.io", "vault_kv": {"path": "r"}}]},
        vault=True,
    ) == [
        "clusters[1].registries[0].server: must be a registry host, optionally with a port "
        "and path prefix (e.g. ghcr.io, registry.example.com:5000/team), without a scheme"
    ]
    assert _settings_problems(
        tmp_path, {"registries": [{"server": "ghcr.io", "vault_kv": {"path": "r"}}]}
    ) == [
        "vault: required: clusters[1] (gpu) copies registry credentials or dependencies from Vault"
    ]
    problems = _settings_problems(
        tmp_path,
        {"copy_dependencies": {"from_vault": [{"name": "db", "path": "p", "keys": []}]}},
        vault=True,
    )
    assert problems == [
        "clusters[1].copy_dependencies.from_vault[0].keys: tuple should have at least 1 item "
        "after validation, not 0"
    ]


def test_the_in_plane_cluster_cannot_copy_from_itself(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    plane = {
        "name": "plane",
        "role": "in-plane",
        "credentials": {"in_cluster": True},
        "copy_dependencies": {"from_plane": {"secrets": ["*"]}},
    }
    path.write_text(yaml.safe_dump({"clusters": [plane]}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert [str(p) for p in caught.value.problems] == [
        "clusters[0].copy_dependencies: the in-plane cluster is where copies come "
        "from; copy to external clusters only"
    ]


def test_settings_become_the_clusters_copy_policy(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    gpu = {
        "name": "gpu",
        "credentials": {"kubeconfig_file": {"path": "/k"}},
        "copy_dependencies": {
            "from_plane": {"secrets": ["regcred", "db-*"], "configmaps": ["*"]},
            "from_vault": [{"kind": "Secret", "name": "api", "path": "tasks/api", "keys": ["t"]}],
        },
        "registries": [{"server": "ghcr.io", "vault_kv": {"path": "registries/ghcr"}}],
    }
    vault = {"url": "https://vault.example:8200", "auth": {"token": {"token": "t"}}}
    path.write_text(yaml.safe_dump({"clusters": [gpu], "vault": vault}))
    policy = load_settings(path).cluster_infos()["gpu"].copies
    assert policy.copies_from_plane(SECRET, "db-main")
    assert not policy.copies_from_plane(SECRET, "other")
    assert policy.copies_from_plane(CONFIG_MAP, "anything")
    assert policy.vault_object(SECRET, "api") == VaultObject(
        SECRET, "api", "secret", "tasks/api", ("t",)
    )
    assert policy.registries == (Registry("ghcr.io", "secret", "registries/ghcr"),)
