"""A malicious kubeconfig in Vault or in a file is refused with a clear error; nothing runs.

The exec plugin used here would create a marker file; the first test shows that the
kubernetes library's own loader does run it, so the marker's absence later means something.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config as kube_config

from dispatcher.credentials import CredentialProvider, VaultSession
from dispatcher.errors import KubeconfigRejected
from dispatcher.settings import ClusterSettings, Credentials, InsecureAllowances, VaultKVCredentials
from tests.credentials.conftest import (
    approle_auth,
    events,
    from_file,
    inline_kubeconfig,
    settings_with,
)
from tests.stack import StackEnv

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation


def exec_plugin(marker: Path) -> dict[str, Any]:
    credential = json.dumps(
        {
            "apiVersion": "client.authentication.k8s.io/v1",
            "kind": "ExecCredential",
            "status": {"token": "from-exec"},
        }
    )
    return {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "sh",
        "args": ["-c", f"touch {marker}; echo '{credential}'"],
        "interactiveMode": "Never",
    }


def evil_kubeconfig(stack_env: StackEnv, user: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    a100 = stack_env.clusters["gpu-a100"]
    return inline_kubeconfig(a100.server, Path(a100.ca_file).read_text(), user, **kwargs)


def refused_from_kv(stack_env: StackEnv, kv_entry: Any, document: dict[str, Any] | str) -> str:
    path = kv_entry(document)
    vault_settings = approle_auth(stack_env)
    session = VaultSession(vault_settings)
    cluster = ClusterSettings(
        name="evil",
        credentials=Credentials(vault_kv=VaultKVCredentials(path=path)),
        allow_insecure=InsecureAllowances(allow_private_addresses=True),
    )
    provider = CredentialProvider(settings_with(vault_settings, cluster), session)
    try:
        with pytest.raises(KubeconfigRejected) as refused:
            provider.api_client("evil")
        assert provider.expiry("evil") is None
        return str(refused.value)
    finally:
        provider.close()
        session.close()


def refused_from_file(tmp_path: Path, document: dict[str, Any]) -> str:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(document))
    provider = CredentialProvider(settings_with(None, from_file("evil", path)), None)
    try:
        with pytest.raises(KubeconfigRejected) as refused:
            provider.api_client("evil")
        return str(refused.value)
    finally:
        provider.close()


def test_the_kubernetes_library_itself_would_run_the_exec_plugin(
    stack_env: StackEnv, tmp_path: Path
) -> None:
    marker = tmp_path / "exec-ran"
    kube_config.new_client_from_config_dict(
        evil_kubeconfig(stack_env, {"exec": exec_plugin(marker)})
    )
    assert marker.exists()


def test_an_exec_plugin_in_vault_is_refused_and_never_runs(
    stack_env: StackEnv, kv_entry: Any, tmp_path: Path, log_output: Any
) -> None:
    marker = tmp_path / "exec-ran"
    message = refused_from_kv(
        stack_env, kv_entry, evil_kubeconfig(stack_env, {"exec": exec_plugin(marker)})
    )
    assert message == (
        "evil: kubeconfig rejected: users[0].user.exec is refused: exec plugins would run a program"
    )
    assert not marker.exists()
    rejection = next(e for e in events(log_output) if e["event"] == "kubeconfig.rejected")
    assert rejection["cluster"] == "evil"
    assert rejection["source"] == "vault_kv"


def test_an_exec_plugin_in_a_kubeconfig_file_is_refused_and_never_runs(
    stack_env: StackEnv, tmp_path: Path
) -> None:
    marker = tmp_path / "exec-ran"
    document = evil_kubeconfig(stack_env, {"exec": exec_plugin(marker)})
    assert "users[0].user.exec is refused" in refused_from_file(tmp_path, document)
    assert not marker.exists()


@pytest.mark.timeout(20)
def test_a_token_file_is_never_opened(stack_env: StackEnv, kv_entry: Any, tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer comes: a read would hang this test.
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    document = evil_kubeconfig(stack_env, {"tokenFile": str(fifo)})
    for message in (
        refused_from_kv(stack_env, kv_entry, document),
        refused_from_file(tmp_path, document),
    ):
        assert "users[0].user.tokenFile is refused: it names a local file" in message
    # Nobody has the FIFO open for reading: a non-blocking writer finds no reader.
    with pytest.raises(OSError, match="No such device or address") as no_reader:
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    assert no_reader.value.errno == errno.ENXIO


@pytest.mark.parametrize(
    ("user", "cluster_extra", "context", "expected"),
    [
        ({"token": "t"}, {"insecure-skip-tls-verify": True}, None, "TLS verification cannot"),
        ({"token": "t"}, {"server": "http://127.0.0.1:1"}, None, "plain http://"),
        ({"auth-provider": {"name": "oidc"}}, {}, None, "users[0].user.auth-provider"),
        ({"username": "u", "password": "p"}, {}, None, "basic authentication"),
        ({"client-certificate": "/etc/c", "client-key": "/etc/k"}, {}, None, "local file"),
        ({"token": "t"}, {"certificate-authority": "/etc/ca"}, None, "local file"),
        ({"token": "t"}, {"proxy-url": "http://127.0.0.1:3128"}, None, "proxy-url"),
        ({"token": "t"}, {}, "missing", "names context 'missing', which does not exist"),
    ],
)
def test_unsafe_kubeconfigs_in_vault_are_refused_with_the_field_named(
    stack_env: StackEnv,
    kv_entry: Any,
    user: dict[str, Any],
    cluster_extra: dict[str, Any],
    context: str | None,
    expected: str,
) -> None:
    document = evil_kubeconfig(stack_env, user, cluster_extra=cluster_extra)
    if context is not None:
        document["current-context"] = context
    assert expected in refused_from_kv(stack_env, kv_entry, document)
