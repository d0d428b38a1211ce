"""A kubeconfig rotated in Vault is picked up after one 401, which the caller never sees."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from dispatcher.credentials import CredentialProvider, VaultSession
from tests.credentials.conftest import (
    Counter,
    a100_from_kv,
    approle_auth,
    events,
    settings_with,
)
from tests.credentials.test_reauthentication import THREADS, all_at_once
from tests.stack import Stack, StackEnv

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation


def list_dispatch_pods(api: Any) -> int:
    return len(client.CoreV1Api(api).list_namespaced_pod("dispatch").items)


def wait_until_refused(stack: Stack, token: str, timeout: float = 30.0) -> None:
    """The old token is revoked by deleting its bound Secret; wait until the API agrees.

    kube-apiserver caches successful token authentications for 10 s, so a revoked token
    keeps working for up to that long.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with stack.kube("gpu-a100", token=token) as api:
            try:
                client.CoreV1Api(api).list_namespaced_pod("dispatch")
            except client.ApiException as exc:
                if exc.status == 401:
                    return
        time.sleep(0.1)
    raise AssertionError("the rotated-out token still works")


@pytest.fixture
def provider(stack_env: StackEnv) -> Any:
    vault_settings = approle_auth(stack_env)
    session = VaultSession(vault_settings)
    provider = CredentialProvider(settings_with(vault_settings, a100_from_kv(stack_env)), session)
    yield provider
    provider.close()
    session.close()


def current_token(provider: CredentialProvider) -> str:
    return str(provider.api_client("gpu-a100").configuration.api_key["authorization"])


def test_a_rotated_kubeconfig_is_picked_up_after_one_401_that_no_caller_sees(
    stack: Stack, provider: CredentialProvider, log_output: Any
) -> None:
    provider.call("gpu-a100", list_dispatch_pods)
    old_client = provider.api_client("gpu-a100")
    old_token = current_token(provider)
    new_token = stack.rotate_restricted_credential("gpu-a100")
    wait_until_refused(stack, old_token)
    counter = Counter()

    # Every thread's first request is refused; none of them sees it, one refetch serves all.
    results = all_at_once(lambda: provider.call("gpu-a100", list_dispatch_pods))

    assert all(isinstance(r, int) for r in results), results
    assert len(results) == THREADS
    assert counter["kv_read"] == 1
    assert provider.api_client("gpu-a100") is not old_client
    assert old_client.closed  # type: ignore[attr-defined]
    assert current_token(provider) == new_token
    logged = [e["event"] for e in events(log_output)]
    assert logged.count("credentials.invalidate") == 1
    assert 1 <= logged.count("credentials.unauthorized") <= THREADS
    refetches = [e for e in events(log_output) if e["event"] == "credentials.refetch"]
    assert [e["reason"] for e in refetches] == ["invalidated"]


def test_invalidating_a_client_that_was_replaced_already_changes_nothing(
    provider: CredentialProvider,
) -> None:
    first = provider.api_client("gpu-a100")
    provider.invalidate("gpu-a100", first)
    second = provider.api_client("gpu-a100")
    counter = Counter()
    provider.invalidate("gpu-a100", first)  # a late caller still holding the old client
    assert provider.api_client("gpu-a100") is second
    assert counter["kv_read"] == 0


def test_a_second_401_reaches_the_caller_and_other_errors_are_not_retried(
    provider: CredentialProvider,
) -> None:
    calls: list[Any] = []

    def always(status: int) -> Any:
        def fn(api: Any) -> None:
            calls.append(api)
            raise client.ApiException(status=status, reason="test")

        return fn

    with pytest.raises(client.ApiException) as refused:
        provider.call("gpu-a100", always(401))
    assert refused.value.status == 401
    assert len(calls) == 2
    assert calls[0] is not calls[1]

    calls.clear()
    with pytest.raises(client.ApiException) as forbidden:
        provider.call("gpu-a100", always(403))
    assert forbidden.value.status == 403
    assert len(calls) == 1
