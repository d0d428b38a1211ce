"""No credentials is our trouble, not the cluster's (real stack: Vault stopped and started).

A cluster whose credentials cannot be had (Vault down, nothing cached) or are refused is
``credentials-unavailable``: nothing is routed there, the SRE is told why, and it is never
``down``, so the dispatcher never moves its running work elsewhere for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.clusters import ClusterCache, HealthReason
from dispatcher.core import Health
from dispatcher.credentials import CredentialProvider, VaultSession
from dispatcher.errors import ClusterUnavailable, ErrorKind, UnavailableCause
from dispatcher.metrics import sample_value
from dispatcher.settings import ClientSettings, ClusterSettings, InsecureAllowances
from tests.clusters.conftest import FAST, gpu_pod, managed, wait_for
from tests.credentials.conftest import a100_from_kv, approle_auth, settings_with
from tests.stack import StackEnv

CLUSTER = "gpu-a100"


@pytest.fixture
def vault_provider(stack_env: StackEnv) -> Iterator[CredentialProvider]:
    """gpu-a100's kubeconfig from Vault KV (AppRole login); nothing fetched yet."""
    vault_settings = approle_auth(stack_env)
    session = VaultSession(vault_settings)
    provider = CredentialProvider(settings_with(vault_settings, a100_from_kv(stack_env)), session)
    yield provider
    provider.close()
    session.close()


@pytest.fixture
def caches() -> Iterator[list[ClusterCache]]:
    made: list[ClusterCache] = []
    yield made
    for cache in made:
        cache.stop()


def a100_cache(
    stack_env: StackEnv, provider: CredentialProvider, caches: list[ClusterCache]
) -> tuple[ClusterCache, list[str]]:
    settings = ClusterSettings(
        name=CLUSTER,
        credentials=a100_from_kv(stack_env).credentials,
        client=ClientSettings(watch_all_pods=False),
        allow_insecure=InsecureAllowances(allow_private_addresses=True),
    )
    cache = ClusterCache([settings], provider, options=FAST)
    caches.append(cache)
    seen: list[str] = []
    cache.add_listener(
        lambda cluster, kind, event, _obj: seen.append(event) if kind == "health" else None
    )
    cache.start()
    return cache, seen


def restarts() -> float:
    return sum(
        sample_value(
            "dispatcher_watch_restarts_total",
            {"cluster": CLUSTER, "resource": resource, "reason": reason},
        )
        for resource in ("nodes", "pods-managed")
        for reason in ("error", "closed", "timeout")
    )


def wait_past_the_down_timeout(cache: ClusterCache, since: float) -> None:
    """Wait for an informer retry later than the down timeout after ``since``, then judge.

    Under the old rule the failing essential watches made the cluster down right then.
    """
    after = since + FAST.health.down_after_seconds + 1
    wait_for(lambda: time.monotonic() > after, timeout=20, what="the down timeout")
    count = restarts()
    wait_for(lambda: restarts() > count, timeout=30, what="an informer retry")
    cache.tick()


def metric(name: str, **labels: str) -> float:
    return sample_value(name, {"cluster": CLUSTER, **labels})


def test_a_vault_outage_before_anything_is_cached_is_credentials_unavailable_never_down(
    stack_env: StackEnv,
    vault_provider: CredentialProvider,
    caches: list[ClusterCache],
    faults: Any,
    namespace: str,
) -> None:
    faults.stop_vault()
    started = time.monotonic()
    cache, seen = a100_cache(stack_env, vault_provider, caches)
    wait_for(
        lambda: cache.health(CLUSTER) is Health.CREDENTIALS_UNAVAILABLE,
        what="credentials unavailable",
    )
    wait_past_the_down_timeout(cache, started)

    status = cache.status(CLUSTER)
    assert (status.health, status.reason) == (
        Health.CREDENTIALS_UNAVAILABLE,
        HealthReason.CREDENTIALS,
    )
    assert status.message.startswith("credentials unavailable: ")
    assert "Vault at " in status.message
    assert "is unreachable" in status.message
    assert "down" not in seen
    # Routing waits for it (not "down", not "no nodes"), the SRE sees why in the metrics.
    state = cache.snapshot().cluster(CLUSTER)
    assert state is not None
    assert state.health is Health.CREDENTIALS_UNAVAILABLE
    assert metric("dispatcher_cluster_up") == 1
    assert metric("dispatcher_cluster_health", state="credentials-unavailable") == 1
    assert metric("dispatcher_cluster_health_reason", reason="credentials") == 1

    # Requests fail fast with the cause, and never open the breaker however many.
    conn = cache.connection(CLUSTER)
    for _ in range(3 * FAST.health.failure_threshold):
        with pytest.raises(ClusterUnavailable, match="credentials unavailable") as refused:
            conn.create_pod(namespace, gpu_pod("never", 1, labels=managed()))
        assert refused.value.cause is UnavailableCause.CREDENTIALS
        assert refused.value.kind is ErrorKind.TRANSIENT
    assert cache.health(CLUSTER) is Health.CREDENTIALS_UNAVAILABLE

    faults.start_vault()
    wait_for(lambda: cache.health(CLUSTER) is Health.UP, timeout=60, what="up once Vault is back")
    assert cache.wait_synced(10)


def test_credentials_lost_while_watching_make_the_cluster_unusable_until_they_are_back(
    stack_env: StackEnv,
    vault_provider: CredentialProvider,
    caches: list[ClusterCache],
    faults: Any,
    namespace: str,
) -> None:
    """The watches still stream on the old credential; a create needing a new one fails.

    The cache reopens the watches to learn whether credentials can be had, so the cluster
    neither flaps back to up on stale streams nor stays unusable after Vault returns.
    """
    cache, seen = a100_cache(stack_env, vault_provider, caches)
    assert cache.wait_synced(30)
    wait_for(lambda: cache.health(CLUSTER) is Health.UP, what="up")
    seen.clear()
    faults.stop_vault()
    # The cached credential is gone (as when it expires): the next request needs Vault.
    vault_provider.invalidate(CLUSTER, vault_provider.api_client(CLUSTER))
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable) as refused:
        cache.connection(CLUSTER).create_pod(namespace, gpu_pod("later", 1, labels=managed()))
    assert refused.value.cause is UnavailableCause.CREDENTIALS
    assert cache.health(CLUSTER) is Health.CREDENTIALS_UNAVAILABLE
    wait_past_the_down_timeout(cache, started)
    assert cache.health(CLUSTER) is Health.CREDENTIALS_UNAVAILABLE
    assert seen == ["credentials-unavailable"]

    faults.start_vault()
    wait_for(lambda: cache.health(CLUSTER) is Health.UP, timeout=30, what="up once Vault is back")
    cache.connection(CLUSTER).create_pod(namespace, gpu_pod("later", 1, labels=managed()))
