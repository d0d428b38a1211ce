"""Tokens and credentials are renewed or fetched anew before they expire, never after."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from dispatcher.credentials import CredentialProvider, VaultSession
from dispatcher.errors import VaultError
from tests.credentials.conftest import (
    Clock,
    Counter,
    approle_auth,
    events,
    h100_from_secrets_engine,
    settings_with,
    token_auth,
)
from tests.stack import StackEnv


def read_server(session: VaultSession, stack_env: StackEnv) -> str:
    return session.read_kv(
        mount="secret", path=stack_env.vault.kv_paths["gpu-h100"], field="server"
    ).value


def test_a_vault_token_with_a_4s_ttl_is_renewed_and_outlives_its_first_ttl(
    stack_env: StackEnv, root_vault: Any
) -> None:
    created = root_vault.auth.token.create(
        policies=[stack_env.vault.policy], ttl="4s", explicit_max_ttl="2m", renewable=True
    )
    short_lived = created["auth"]["client_token"]
    counter = Counter()
    session = VaultSession(token_auth(stack_env, short_lived, renew_ahead_fraction=0.5))
    try:
        read_server(session, stack_env)
        first_expiry = session.token_expiry()
        assert first_expiry is not None
        assert first_expiry - time.time() <= 4
        time.sleep(2.5)  # 1.5 s left: inside the renew-ahead window (half of 4 s)
        read_server(session, stack_env)
        assert counter["renew"] == 1
        renewed = session.token_expiry()
        assert renewed is not None
        assert renewed > first_expiry
        time.sleep(2.0)  # now past the token's first TTL
        assert read_server(session, stack_env) == stack_env.clusters["gpu-h100"].server
        assert root_vault.lookup_token(short_lived)["data"]["ttl"] > 0
        assert counter["login"] == 0  # a fixed token is renewed, never replaced
    finally:
        session.close()


def test_a_renewable_login_token_is_renewed_in_its_last_quarter(
    stack_env: StackEnv, clock: Clock
) -> None:
    counter = Counter()
    session = VaultSession(approle_auth(stack_env), clock=clock)
    try:
        session.login()
        clock.advance(2600)  # 1000 s of 3600 left: not yet
        read_server(session, stack_env)
        assert counter["renew"] == 0
        clock.advance(200)  # 800 s left < 900 s (a quarter)
        read_server(session, stack_env)
        assert (counter["renew"], counter["login"], session.generation) == (1, 1, 1)
        expiry = session.token_expiry()
        assert expiry is not None
        assert expiry - clock() > 3500
    finally:
        session.close()


def test_a_non_renewable_batch_token_is_replaced_by_one_new_login_before_it_expires(
    stack_env: StackEnv, root_vault: Any, clock: Clock
) -> None:
    mount = stack_env.vault.approle_mount
    root_vault.write_data(
        f"auth/{mount}/role/kd-batch",
        data={"token_policies": [stack_env.vault.policy], "token_type": "batch", "token_ttl": "1h"},
    )
    role_id = root_vault.read(f"auth/{mount}/role/kd-batch/role-id")["data"]["role_id"]
    secret_id = root_vault.write_data(f"auth/{mount}/role/kd-batch/secret-id")["data"]["secret_id"]
    counter = Counter()
    session = VaultSession(
        approle_auth(stack_env, role_id=role_id, secret_id=secret_id), clock=clock
    )
    try:
        session.login()
        clock.advance(2800)  # 800 s left, and the token cannot be renewed
        read_server(session, stack_env)
        assert (counter["login"], counter["renew"], session.generation) == (2, 0, 2)
    finally:
        session.close()


def test_secrets_engine_credential_is_refetched_ahead_of_its_lease_end(
    stack_env: StackEnv, clock: Clock, log_output: Any
) -> None:
    vault_settings = approle_auth(stack_env)
    session = VaultSession(vault_settings, clock=clock)
    provider = CredentialProvider(
        settings_with(vault_settings, h100_from_secrets_engine(stack_env, ttl_seconds=600)),
        session,
        clock=clock,
    )
    counter = Counter()
    try:
        first = provider.api_client("gpu-h100")
        clock.advance(440)  # 160 s of 600 left: not yet in the last quarter
        assert provider.api_client("gpu-h100") is first
        clock.advance(20)  # 140 s left
        second = provider.api_client("gpu-h100")
        assert second is not first
        assert first.closed  # type: ignore[attr-defined]
        assert client.CoreV1Api(second).list_node().items
        assert counter["kubernetes_creds"] == 2
        expiry = provider.expiry("gpu-h100")
        assert expiry is not None
        assert expiry - clock() > 590
        # A loop can do the same off the request path.
        assert provider.refresh_due() == ()
        clock.advance(460)
        assert provider.refresh_due() == ("gpu-h100",)
        assert counter["kubernetes_creds"] == 3
        assert provider.api_client("gpu-h100") is not second
        refetches = [e for e in events(log_output) if e["event"] == "credentials.refetch"]
        assert [e["reason"] for e in refetches] == ["expiring", "expiring"]
    finally:
        provider.close()
        session.close()


def test_a_failed_early_refresh_keeps_the_valid_client_but_an_expired_one_is_never_used(
    stack_env: StackEnv, clock: Clock, monkeypatch: pytest.MonkeyPatch, log_output: Any
) -> None:
    vault_settings = approle_auth(stack_env)
    session = VaultSession(vault_settings, clock=clock)
    provider = CredentialProvider(
        settings_with(vault_settings, h100_from_secrets_engine(stack_env, ttl_seconds=600)),
        session,
        clock=clock,
    )
    try:
        first = provider.api_client("gpu-h100")

        def vault_down(**_: Any) -> Any:
            raise VaultError("Vault at http://vault is unreachable for kubernetes_creds")

        monkeypatch.setattr(session, "kubernetes_creds", vault_down)
        clock.advance(500)  # due for an early refresh, which fails
        assert provider.api_client("gpu-h100") is first
        assert any(e["event"] == "credentials.refresh_failed" for e in events(log_output))
        clock.advance(200)  # past the lease end: the old token must not be used
        with pytest.raises(VaultError):
            provider.api_client("gpu-h100")
        monkeypatch.undo()
        fresh = provider.api_client("gpu-h100")
        assert fresh is not first
        assert client.CoreV1Api(fresh).list_node().items
    finally:
        provider.close()
        session.close()
