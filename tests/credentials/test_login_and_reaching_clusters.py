"""The dispatcher logs in to Vault, fetches each cluster's credential and reaches the cluster."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import Configuration

from dispatcher.core import ClusterRole
from dispatcher.credentials import ClusterApiClient, CredentialProvider, VaultSession
from dispatcher.errors import CredentialError, VaultError
from dispatcher.settings import (
    ClientSettings,
    ClusterSettings,
    Credentials,
    InClusterCredentials,
    InsecureAllowances,
)
from tests.credentials.conftest import (
    Counter,
    a100_from_kv,
    approle_auth,
    from_file,
    h100_from_secrets_engine,
    kubernetes_auth,
    settings_with,
    token_auth,
)
from tests.stack import Stack, StackEnv

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

#: 37.x takes the CA in memory; up to 36.x, only as a file.
IN_MEMORY_CA = hasattr(Configuration(), "ca_cert_data")


def node_names(provider: CredentialProvider, cluster: str) -> set[str]:
    return {
        n.metadata.name
        for n in provider.call(cluster, lambda api: client.CoreV1Api(api).list_node().items)
    }


def test_kubernetes_auth_reads_kv_kubeconfig_and_secrets_engine_token_and_lists_nodes(
    stack_env: StackEnv, jwt_file: Path
) -> None:
    vault_settings = kubernetes_auth(stack_env, jwt_file)
    counter = Counter()
    with_vault = VaultSession(vault_settings)
    provider = CredentialProvider(
        settings_with(vault_settings, a100_from_kv(stack_env), h100_from_secrets_engine(stack_env)),
        with_vault,
    )
    try:
        assert node_names(provider, "gpu-a100") == set(stack_env.clusters["gpu-a100"].nodes)
        assert node_names(provider, "gpu-h100") == set(stack_env.clusters["gpu-h100"].nodes)
        assert with_vault.method == "kubernetes"
        assert counter["login"] == 1
        assert counter["kubernetes_creds"] == 1
        # The secrets engine token lives for its lease (600 s), not longer.
        expiry = provider.expiry("gpu-h100")
        token_expiry = with_vault.token_expiry()
        assert expiry is not None
        assert token_expiry is not None
        assert 500 < expiry - time.time() <= 600
        # The identities are the restricted ones, not admins.
        with pytest.raises(client.ApiException) as denied:
            provider.call(
                "gpu-h100", lambda api: client.CoreV1Api(api).list_namespaced_secret("kube-system")
            )
        assert denied.value.status == 403
    finally:
        provider.close()
        with_vault.close()


def test_approle_login_reaches_both_clusters(stack_env: StackEnv) -> None:
    vault_settings = approle_auth(stack_env)
    session = VaultSession(vault_settings)
    provider = CredentialProvider(
        settings_with(vault_settings, a100_from_kv(stack_env), h100_from_secrets_engine(stack_env)),
        session,
    )
    try:
        assert node_names(provider, "gpu-a100")
        assert node_names(provider, "gpu-h100")
        assert session.method == "approle"
        assert session.token_accessor
    finally:
        provider.close()
        session.close()


def test_token_auth_reads_kv_with_a_fixed_token(stack_env: StackEnv) -> None:
    session = VaultSession(token_auth(stack_env, stack_env.vault.root_token))
    try:
        entry = session.read_kv(
            mount="secret", path=stack_env.vault.kv_paths["gpu-h100"], field="server"
        )
        assert entry.value == stack_env.clusters["gpu-h100"].server
        assert session.method == "token"
        assert session.token_expiry() is None  # the root token never expires
    finally:
        session.close()


def test_kv_version_can_be_pinned_and_missing_fields_are_named(
    stack_env: StackEnv, kv_entry: Any, root_vault: Any
) -> None:
    path = kv_entry("first")
    root_vault.secrets.kv.v2.create_or_update_secret(
        path=path, mount_point="secret", secret={"kubeconfig": "second"}
    )
    session = VaultSession(approle_auth(stack_env))
    try:
        assert session.read_kv(mount="secret", path=path, field="kubeconfig").value == "second"
        pinned = session.read_kv(mount="secret", path=path, field="kubeconfig", version=1)
        assert (pinned.value, pinned.version) == ("first", 1)
        with pytest.raises(CredentialError, match="has no field 'nope'"):
            session.read_kv(mount="secret", path=path, field="nope", cluster="gpu-a100")
        with pytest.raises(VaultError) as missing:
            session.read_kv(mount="secret", path="clusters/does-not-exist", field="kubeconfig")
        assert missing.value.status == 404
    finally:
        session.close()


def test_kubeconfig_file_and_in_cluster_credentials_reach_the_plane(
    stack: Stack, stack_env: StackEnv, tmp_path: Path
) -> None:
    service_account = tmp_path / "serviceaccount"
    service_account.mkdir()
    (service_account / "token").write_text(
        stack.service_account_token(
            "plane", stack_env.dispatcher_namespace, stack_env.dispatcher_service_account
        )
    )
    (service_account / "ca.crt").write_text(Path(stack_env.ca_file).read_text())
    (service_account / "namespace").write_text(stack_env.dispatcher_namespace)
    port = stack_env.clusters["plane"].server.rsplit(":", 1)[1]
    settings = settings_with(
        None,
        ClusterSettings(
            name="plane",
            role=ClusterRole.IN_PLANE,
            credentials=Credentials(in_cluster=InClusterCredentials()),
            allow_insecure=InsecureAllowances(allow_private_addresses=True),
        ),
        from_file("plane-by-file", Path(stack_env.clusters["plane"].restricted_kubeconfig)),
    )
    provider = CredentialProvider(
        settings,
        None,
        service_account_dir=service_account,
        environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port},
    )
    try:
        assert node_names(provider, "plane") == set(stack_env.clusters["plane"].nodes)
        assert node_names(provider, "plane-by-file") == set(stack_env.clusters["plane"].nodes)
        # The service account token's own `exp` tells when to re-read it.
        assert provider.expiry("plane") is not None
    finally:
        provider.close()


_SECURITY_FIELDS = (
    "host",
    "api_key",
    "api_key_prefix",
    "username",
    "password",
    "ssl_ca_cert",
    "ca_cert_data",
    "cert_file",
    "key_file",
    "verify_ssl",
    "assert_hostname",
    "tls_server_name",
    "proxy",
    "retries",
    "refresh_api_key_hook",
)


def default_settings() -> dict[str, Any]:
    default = Configuration.get_default_copy()
    # ca_cert_data exists from 37.x on.
    return {name: copy.deepcopy(getattr(default, name, None)) for name in _SECURITY_FIELDS}


def test_clients_never_touch_the_global_default_configuration(
    stack_env: StackEnv, jwt_file: Path
) -> None:
    default_object = Configuration._default
    before = default_settings()
    vault_settings = kubernetes_auth(stack_env, jwt_file)
    session = VaultSession(vault_settings)
    provider = CredentialProvider(
        settings_with(vault_settings, a100_from_kv(stack_env), h100_from_secrets_engine(stack_env)),
        session,
    )
    try:
        node_names(provider, "gpu-a100")
        node_names(provider, "gpu-h100")
        after = default_settings()
        assert after == before
        assert Configuration._default is default_object
        assert not after["api_key"]
        # An ApiClient made without a configuration still knows nothing of our clusters.
        plain = client.ApiClient().configuration
        assert plain.host == before["host"]
        assert not plain.api_key
    finally:
        provider.close()
        session.close()


def test_each_client_has_the_cluster_timeouts_verified_tls_and_no_read_retries(
    stack_env: StackEnv,
) -> None:
    cluster = from_file(
        "plane",
        Path(stack_env.clusters["plane"].restricted_kubeconfig),
        client=ClientSettings(connect_timeout_seconds=1.5, read_timeout_seconds=7),
    )
    provider = CredentialProvider(settings_with(None, cluster), None)
    try:
        api = provider.api_client("plane")
        assert isinstance(api, ClusterApiClient)
        assert api.default_timeout == (1.5, 7)
        conf = api.configuration
        assert conf.verify_ssl is True
        if IN_MEMORY_CA:
            assert conf.ca_cert_data  # the CA is in memory, not in a file
            assert conf.ssl_ca_cert is None
        else:  # up to 36.x: a private file, removed with the client
            assert Path(conf.ssl_ca_cert).parent == api.key_dir
        assert conf.retries.read == 0
        assert conf.retries.redirect == 0
        assert conf.debug is False
    finally:
        provider.close()


def test_an_unknown_cluster_and_a_closed_provider_are_credential_errors(
    stack_env: StackEnv,
) -> None:
    provider = CredentialProvider(
        settings_with(
            None, from_file("plane", Path(stack_env.clusters["plane"].restricted_kubeconfig))
        ),
        None,
    )
    with pytest.raises(CredentialError, match="unknown cluster"):
        provider.api_client("nowhere")
    provider.close()
    with pytest.raises(CredentialError, match="closed"):
        provider.api_client("plane")
