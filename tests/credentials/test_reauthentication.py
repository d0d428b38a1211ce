"""When Vault stops accepting the token, the dispatcher logs in again exactly once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from dispatcher.credentials import CredentialProvider, VaultSession
from dispatcher.errors import VaultError
from tests.credentials.conftest import (
    Clock,
    Counter,
    a100_from_kv,
    approle_auth,
    events,
    h100_from_secrets_engine,
    kubernetes_auth,
    settings_with,
    token_auth,
)
from tests.stack import Stack, StackEnv

THREADS = 8


def all_at_once(fn: Callable[[], Any], threads: int = THREADS) -> list[Any]:
    """Run ``fn`` in ``threads`` threads released together; return results or exceptions."""
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = fn()
        except Exception as exc:
            results[index] = exc

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return results


def read_h100_server(session: VaultSession, stack_env: StackEnv) -> Callable[[], str]:
    return lambda: (
        session.read_kv(
            mount="secret", path=stack_env.vault.kv_paths["gpu-h100"], field="server"
        ).value
    )


def test_threads_refused_with_a_revoked_token_share_one_new_login(
    stack_env: StackEnv, root_vault: Any, log_output: Any
) -> None:
    session = VaultSession(approle_auth(stack_env))
    try:
        session.login()
        root_vault.auth.token.revoke_accessor(session.token_accessor)
        counter = Counter()
        results = all_at_once(read_h100_server(session, stack_env))
        assert results == [stack_env.clusters["gpu-h100"].server] * THREADS
        assert counter["login"] == 1
        # One check that the token, not the policy, was refused; one refusal per thread.
        assert counter["lookup", "denied"] == 1
        assert counter["kv_read", "denied"] <= THREADS
        assert session.generation == 2
        reauths = [e for e in events(log_output) if e["event"] == "vault.reauthenticate"]
        assert len(reauths) == 1
    finally:
        session.close()


def test_threads_finding_the_token_expired_share_one_new_login(
    stack_env: StackEnv, clock: Clock
) -> None:
    session = VaultSession(approle_auth(stack_env), clock=clock)
    try:
        session.login()
        clock.advance(3700)  # past the token's 1 h TTL
        counter = Counter()
        results = all_at_once(read_h100_server(session, stack_env))
        assert results == [stack_env.clusters["gpu-h100"].server] * THREADS
        assert (counter["login"], counter["renew"]) == (1, 0)
        assert session.generation == 2
    finally:
        session.close()


def test_a_policy_denial_is_reported_without_logging_in_again(stack_env: StackEnv) -> None:
    session = VaultSession(approle_auth(stack_env))
    try:
        session.login()
        counter = Counter()
        for _ in range(2):
            with pytest.raises(VaultError) as denied:
                session.read_kv(mount="secret", path="other/thing", field="x", cluster="gpu-a100")
            assert denied.value.status == 403
            assert denied.value.cluster == "gpu-a100"
            assert "permission denied" in str(denied.value)
            assert "policy" in str(denied.value)
        assert counter["login"] == 0
        assert counter["lookup"] == 2  # each denial checked the token: still valid
        assert session.generation == 1
    finally:
        session.close()


@pytest.fixture
def resync_kv_after_vault_restart(stack: Stack) -> Any:
    """A restarted dev Vault is refilled with the first generation of gpu-a100's kubeconfig,
    which earlier rotations revoked; rotating once more stores a working one again."""
    yield
    stack.rotate_restricted_credential("gpu-a100")


@pytest.mark.usefixtures("resync_kv_after_vault_restart")
def test_a_vault_restart_that_lost_every_token_is_recovered_by_one_login(
    stack_env: StackEnv, jwt_file: Path, root_vault: Any, faults: Any
) -> None:
    vault_settings = kubernetes_auth(stack_env, jwt_file)
    session = VaultSession(vault_settings)
    provider = CredentialProvider(
        settings_with(vault_settings, h100_from_secrets_engine(stack_env)), session
    )
    child = root_vault.auth.token.create(policies=[stack_env.vault.policy], ttl="1h")
    fixed = VaultSession(token_auth(stack_env, child["auth"]["client_token"]))
    try:
        cached = provider.api_client("gpu-h100")
        fixed.login()
        faults.stop_vault()
        # Cached cluster credentials keep working while Vault is down.
        assert provider.call("gpu-h100", lambda api: client.CoreV1Api(api).list_node().items)
        with pytest.raises(VaultError) as down:
            read_h100_server(session, stack_env)()
        assert down.value.status is None
        assert "unreachable" in str(down.value)
        faults.start_vault()

        counter = Counter()
        provider.invalidate("gpu-h100", cached)
        results = all_at_once(
            lambda: provider.call(
                "gpu-h100", lambda api: len(client.CoreV1Api(api).list_node().items)
            )
        )
        assert results == [len(stack_env.clusters["gpu-h100"].nodes)] * THREADS
        assert counter["login"] == 1
        assert counter["kubernetes_creds"] == 1
        assert session.generation == 2
        # A fixed token cannot log in again: the error says what to do.
        with pytest.raises(VaultError, match=r"replace vault\.auth\.token\.token"):
            read_h100_server(fixed, stack_env)()
    finally:
        provider.close()
        session.close()
        fixed.close()


def test_kv_credentials_still_read_after_the_restart(stack_env: StackEnv) -> None:
    """Runs after the restart test: the stack is usable again for the tests that follow."""
    vault_settings = approle_auth(stack_env)
    session = VaultSession(vault_settings)
    provider = CredentialProvider(settings_with(vault_settings, a100_from_kv(stack_env)), session)
    try:
        assert provider.call("gpu-a100", lambda api: client.CoreV1Api(api).list_node().items)
    finally:
        provider.close()
        session.close()
