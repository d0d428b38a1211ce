"""Settings come from a YAML file and DISPATCHER_* variables; invalid settings fail at
start with every problem listed at its field, and never echo a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.core import ClusterRole, Strategy
from dispatcher.errors import ConfigError
from dispatcher.settings import load_settings

EXAMPLE = Path(__file__).parents[2] / "config" / "dispatcher.example.yaml"


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _problems(tmp_path: Path, data: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, data))
    return [str(p) for p in caught.value.problems]


PLANE = {"name": "plane", "role": "in-plane", "credentials": {"in_cluster": True}}


def test_the_example_configuration_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert [c.name for c in settings.clusters] == ["plane", "gpu-a100", "gpu-h100"]
    assert settings.clusters[0].role is ClusterRole.IN_PLANE
    assert settings.cluster_infos()["gpu-h100"].labels == {
        "topology.kubernetes.io/region": "eu-west-1"
    }


def test_the_file_may_come_from_dispatcher_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_CONFIG", str(EXAMPLE))
    assert len(load_settings().clusters) == 3


def test_environment_variables_override_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_ROUTING__STRATEGY", "bin-pack")
    monkeypatch.setenv("DISPATCHER_VAULT__URL", "https://other-vault:8200")
    settings = load_settings(EXAMPLE)
    assert settings.routing.strategy is Strategy.BIN_PACK
    assert settings.vault is not None
    assert settings.vault.url == "https://other-vault:8200"
    assert settings.vault.auth.kubernetes is not None  # the rest of the section is kept


def test_every_problem_is_listed_field_by_field(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "clusters": [
                PLANE,
                {"name": "gpu", "credentials": {"vault_kv": {"mount": "secret"}}},
                {
                    "name": "Bad_Name",
                    "credentials": {"in_cluster": True, "kubeconfig_file": {"path": "/k"}},
                    "client": {"qps": 50, "burst": 10},
                },
                {
                    "name": "plane",
                    "role": "in-plane",
                    "credentials": {"kubeconfig_file": {"path": "/k"}},
                    "cost": {"cpu_hour": -1},
                },
            ],
            "routing": {"strategy": "fastest"},
        },
    )
    assert problems == [
        "clusters[1].credentials.vault_kv.path: field required",
        "clusters[2].name: 'Bad_Name' is not a valid RFC 1123 name: use lowercase letters, "
        "digits and '-', starting and ending with a letter or digit",
        "clusters[2].credentials: set exactly one of in_cluster, kubeconfig_file, vault_kv, "
        "vault_kubernetes_secrets (found: in_cluster, kubeconfig_file)",
        "clusters[2].client: burst (10) must be at least qps (50.0)",
        "clusters[3].cost.cpu_hour: input should be greater than or equal to 0",
        "routing.strategy: input should be 'cost', 'least-loaded', 'bin-pack' or 'weighted'",
        "vault: required: clusters[1] (gpu) reads its credentials from Vault",
        "clusters[3].name: duplicate cluster name 'plane' (also clusters[0])",
        "clusters[3].role: only one cluster can be in-plane (clusters[0] is)",
    ]


def test_the_state_cluster_must_be_a_configured_cluster(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path, {"clusters": [PLANE], "service": {"state_cluster": "plane-typo"}}
    )
    assert problems == [
        "service.state_cluster: 'plane-typo' is not one of the configured clusters (plane)"
    ]
    named = load_settings(
        _write(tmp_path, {"clusters": [PLANE], "service": {"state_cluster": "plane"}})
    )
    assert named.service.state_cluster == "plane"


def test_in_cluster_credentials_need_the_in_plane_role(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path, {"clusters": [{"name": "ext", "credentials": {"in_cluster": True}}]}
    )
    assert problems == [
        "clusters[0].credentials.in_cluster: in-cluster credentials reach only "
        "the dispatcher's own cluster; use them with role: in-plane"
    ]


def test_plain_http_is_refused_unless_allowed(tmp_path: Path) -> None:
    secrets_engine = {"role": "r", "kubernetes_namespace": "batch", "server": "http://k:6443"}
    vault = {"url": "http://vault:8200", "auth": {"kubernetes": {"role": "d"}}}
    problems = _problems(
        tmp_path,
        {
            "clusters": [
                PLANE,
                {"name": "gpu", "credentials": {"vault_kubernetes_secrets": secrets_engine}},
            ],
            "vault": vault,
        },
    )
    assert [p.split(":")[0] for p in problems] == [
        "clusters[1].credentials.vault_kubernetes_secrets.server",
        "vault.url",
    ]

    allowed = load_settings(
        _write(
            tmp_path,
            {
                "clusters": [
                    PLANE,
                    {
                        "name": "gpu",
                        "allow_insecure": {"allow_http": True},
                        "credentials": {"vault_kubernetes_secrets": secrets_engine},
                    },
                ],
                "vault": {**vault, "allow_http": True},
            },
        )
    )
    assert allowed.vault is not None


def test_secrets_never_appear_in_errors_or_reprs(tmp_path: Path) -> None:
    data = {
        "clusters": [PLANE],
        "vault": {
            "url": "https://v:8200",
            "unknown": "s.hunter2",
            "auth": {
                "approle": {"role_id": "r", "secret_id": "s.hunter2"},
                "token": {"token": "s.hunter2"},
            },
        },
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, data))
    assert "hunter2" not in str(caught.value)

    del data["vault"]["unknown"]  # type: ignore[attr-defined]
    del data["vault"]["auth"]["token"]  # type: ignore[index]
    settings = load_settings(_write(tmp_path, data))
    assert "hunter2" not in repr(settings)
    assert settings.vault is not None
    assert settings.vault.auth.approle is not None
    assert settings.vault.auth.approle.secret_id.get_secret_value() == "s.hunter2"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("clusters: [", "not valid YAML at line 1, column 12"),
        ("- a\n- b\n", "must be a mapping"),
        ("", "clusters: field required"),
    ],
)
def test_unreadable_files_are_explained(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path, content))


def test_a_missing_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file: No such file"):
        load_settings(tmp_path / "missing.yaml")
