"""Vault leases of the Kubernetes secrets engine end when their token is no longer used.

On the real stack: the provider fetches a token for ``gpu-h100``; when it is replaced (a
401 invalidates it, the next call fetches another) its lease is revoked, and when the
provider closes (shutdown) the current one is too. Judged from outside: Vault's own list of
the creds path's leases, read with the root token.
"""

from __future__ import annotations

from pathlib import Path

import hvac
from kubernetes import client

from dispatcher.credentials import CredentialProvider, VaultSession
from tests.credentials.conftest import h100_from_secrets_engine, kubernetes_auth, settings_with
from tests.stack import StackEnv


def live_leases(root_vault: hvac.Client, stack_env: StackEnv) -> set[str]:
    """Lease ids under the secrets engine's creds path, as Vault holds them."""
    vault = stack_env.vault
    prefix = f"{vault.kubernetes_secrets_mount}/creds/{vault.kubernetes_secrets_role}/"
    try:
        listed = root_vault.sys.list_leases(prefix)
    except hvac.exceptions.InvalidPath:
        return set()
    return {prefix + key for key in listed["data"]["keys"]}


def looked_up(root_vault: hvac.Client, lease: str) -> bool:
    """Whether Vault still knows ``lease`` (``sys/leases/lookup``)."""
    try:
        root_vault.sys.read_lease(lease)
    except hvac.exceptions.InvalidRequest:
        return False
    return True


def test_a_replaced_lease_is_revoked_and_the_last_one_at_shutdown(
    stack_env: StackEnv, jwt_file: Path, root_vault: hvac.Client
) -> None:
    before = live_leases(root_vault, stack_env)
    vault_settings = kubernetes_auth(stack_env, jwt_file)
    vault = VaultSession(vault_settings)
    provider = CredentialProvider(
        settings_with(vault_settings, h100_from_secrets_engine(stack_env)), vault
    )
    try:
        first = provider.api_client("gpu-h100")
        client.CoreV1Api(first).list_node()
        (lease,) = live_leases(root_vault, stack_env) - before
        assert looked_up(root_vault, lease)
        provider.invalidate("gpu-h100", first)
        client.CoreV1Api(provider.api_client("gpu-h100")).list_node()
        # The replaced lease is gone; its successor is the one live lease of ours.
        (second,) = live_leases(root_vault, stack_env) - before
        assert second != lease
        assert not looked_up(root_vault, lease)
        provider.close()
        assert not looked_up(root_vault, second)
        assert live_leases(root_vault, stack_env) - before == set()
    finally:
        provider.close()
        vault.close()
