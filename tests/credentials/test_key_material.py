"""Client certificate keys live only in a private directory, and only while in use."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from dispatcher.credentials import ClusterApiClient, CredentialProvider, KeyMaterial
from tests.credentials.conftest import Clock, b64, from_file, settings_with
from tests.credentials.test_login_and_reaching_clusters import IN_MEMORY_CA
from tests.stack import StackEnv
from tests.stack.pki import Pki, issue_client_cert

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def cert_kubeconfig(stack_env: StackEnv, tmp_path: Path) -> Path:
    """A kubeconfig for gpu-a100 that authenticates with an inline client certificate."""
    cert_pem, key_pem = issue_client_cert(
        Pki(Path(stack_env.state_dir) / "pki"), "cert-user", ("system:masters",)
    )
    a100 = stack_env.clusters["gpu-a100"]
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "a100",
                "cluster": {
                    "server": a100.server,
                    "certificate-authority-data": b64(Path(a100.ca_file).read_text()),
                },
            }
        ],
        "users": [
            {
                "name": "cert-user",
                "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)},
            }
        ],
        "contexts": [{"name": "a100", "context": {"cluster": "a100", "user": "cert-user"}}],
        "current-context": "a100",
    }
    path = tmp_path / "cert-kubeconfig.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def key_dir_of(api: Any) -> Path:
    assert isinstance(api, ClusterApiClient)
    assert api.key_dir is not None
    return api.key_dir


def test_key_files_are_0600_in_a_0700_directory_and_the_certificate_authenticates(
    cert_kubeconfig: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    provider = CredentialProvider(
        settings_with(None, from_file("gpu-a100", cert_kubeconfig)), None, key_dir=keys
    )
    try:
        api = provider.api_client("gpu-a100")
        directory = key_dir_of(api)
        assert directory.parent == keys
        assert mode(directory) == 0o700
        # Only what urllib3 must read from disk is there: the CA stays in memory where
        # the client takes it so (37.x), and is a file up to 36.x.
        ca_file = [] if IN_MEMORY_CA else ["ca.crt"]
        assert sorted(p.name for p in directory.iterdir()) == [*ca_file, "client.crt", "client.key"]
        assert all(mode(p) == 0o600 for p in directory.iterdir())
        assert "PRIVATE KEY" in (directory / "client.key").read_text()
        if IN_MEMORY_CA:
            assert api.configuration.ssl_ca_cert is None
        # system:masters through the certificate: the admin-only secrets list works.
        assert client.CoreV1Api(api).list_namespaced_secret("kube-system") is not None
    finally:
        provider.close()
    assert not directory.exists()
    assert list(keys.iterdir()) == []


def test_key_material_of_a_replaced_client_is_removed_at_once(
    cert_kubeconfig: Path, tmp_path: Path, clock: Clock
) -> None:
    provider = CredentialProvider(
        settings_with(None, from_file("gpu-a100", cert_kubeconfig)),
        None,
        clock=clock,
        key_dir=tmp_path,
        max_age_seconds=60,
    )
    try:
        first = provider.api_client("gpu-a100")
        first_dir = key_dir_of(first)
        provider.invalidate("gpu-a100", first)  # after a 401
        assert not first_dir.exists()
        second = provider.api_client("gpu-a100")
        second_dir = key_dir_of(second)
        assert second_dir != first_dir
        clock.advance(61)  # past max_age: re-read and rotated ahead of time
        third = provider.api_client("gpu-a100")
        assert third is not second
        assert not second_dir.exists()
        assert key_dir_of(third).exists()
        assert client.CoreV1Api(third).list_node().items
    finally:
        provider.close()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_key_material_is_removed_when_its_owner_is_garbage_collected(tmp_path: Path) -> None:
    material = KeyMaterial(base_dir=tmp_path)
    material.write("client.key", "-----BEGIN PRIVATE KEY-----\n")
    directory = material.path
    del material
    assert not directory.exists()


def test_key_material_never_replaces_or_follows_an_existing_file(tmp_path: Path) -> None:
    material = KeyMaterial(base_dir=tmp_path)
    try:
        target = tmp_path / "elsewhere"
        (material.path / "client.key").symlink_to(target)
        with pytest.raises(FileExistsError):
            material.write("client.key", "secret")
        assert not target.exists()
        with pytest.raises(ValueError, match="plain file name"):
            material.write("../escape", "secret")
    finally:
        material.remove()
    with pytest.raises(RuntimeError):
        material.write("late", "secret")
