"""A cluster is down when its API server is in trouble, nothing else (real stack, with a
fault-injecting proxy in front of gpu-h100's API server).

429s are answers: a throttling cluster stays routable, its Retry-After is honoured, and it
is never marked down. Repeated 5xx, dropped connections and timeouts are the API server's
trouble: they open the breaker and mark the cluster down.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from dispatcher.clusters import (
    ClusterCache,
    ClusterHealth,
    Connection,
    HealthPolicy,
    HealthReason,
)
from dispatcher.core import Health
from dispatcher.errors import ApiError, ClusterUnavailable, ErrorKind, UnavailableCause
from dispatcher.metrics import sample_value
from dispatcher.settings import ClientSettings
from tests.clusters.conftest import FAST, gpu_pod, managed, wait_for
from tests.clusters.provider import KubeconfigProvider
from tests.faultproxy import Answer, Drop, FaultProxy, Hang, Pass, for_stack
from tests.stack import Stack, StackEnv

CLUSTER = "gpu-h100"


@pytest.fixture
def proxy(stack_env: StackEnv) -> Iterator[FaultProxy]:
    with for_stack(stack_env, CLUSTER) as proxy:
        yield proxy


@pytest.fixture
def proxied(provider: KubeconfigProvider, proxy: FaultProxy) -> KubeconfigProvider:
    """The tests' provider, with gpu-h100 reached through the proxy."""
    provider.host_override[CLUSTER] = proxy.url
    return provider


def fresh_health(threshold: int = 3) -> ClusterHealth:
    """A health with a fast clock of its own: probes wait 60 s, so none happens by itself."""
    ticks = itertools.count(1000.0, 0.001)
    return ClusterHealth(
        CLUSTER,
        HealthPolicy(
            failure_threshold=threshold, probe_after_seconds=60, max_probe_after_seconds=60
        ),
        {},
        clock=lambda: next(ticks),
    )


def requests_counted(verb: str, code: str) -> float:
    return sample_value(
        "dispatcher_kube_api_requests_total", {"cluster": CLUSTER, "verb": verb, "code": code}
    )


def health_metric(name: str, **labels: str) -> float:
    return sample_value(name, {"cluster": CLUSTER, **labels})


# ----- one connection --------------------------------------------------------------------
def test_a_429_is_throttled_with_its_retry_after_and_never_marks_the_cluster_down(
    proxied: KubeconfigProvider, proxy: FaultProxy
) -> None:
    health = fresh_health()
    conn = Connection(CLUSTER, proxied, health=health)
    assert conn.list_nodes()  # through the proxy, unchanged
    proxy.set_mode(Answer(429, retry_after=3, message="Too many requests, please try again later."))
    before = requests_counted("get", "429")
    for _ in range(30):
        with pytest.raises(ApiError) as throttled:
            conn.read_pod("default", "any")
        assert throttled.value.kind is ErrorKind.THROTTLED
        assert throttled.value.retry_after == 3.0
        assert throttled.value.status == 429
    assert requests_counted("get", "429") == before + 30  # every one was sent and counted
    assert health.allow_request()
    status = health.status()
    assert (status.health, status.reason) == (Health.DEGRADED, HealthReason.THROTTLED)
    assert "HTTP 429 TooManyRequests" in status.message
    assert health_metric("dispatcher_cluster_up") == 1
    assert health_metric("dispatcher_cluster_health_reason", reason="throttled") == 1

    proxy.set_mode(Pass())
    assert conn.read_pod("default", "any") is None


def test_repeated_503s_mark_the_cluster_down_and_the_breaker_refuses_requests(
    proxied: KubeconfigProvider, proxy: FaultProxy
) -> None:
    health = fresh_health(threshold=3)
    conn = Connection(CLUSTER, proxied, health=health)
    proxy.set_mode(Answer(503))
    for _ in range(3):
        with pytest.raises(ApiError) as unavailable:
            conn.read_pod("default", "any")
        assert unavailable.value.kind is ErrorKind.TRANSIENT
    status = health.status()
    assert (status.health, status.reason) == (Health.DOWN, HealthReason.UNREACHABLE)
    assert "3 consecutive failures, last: read pod default/any: HTTP 503" in status.message
    assert health_metric("dispatcher_cluster_up") == 0
    sent = proxy.seen()
    with pytest.raises(ClusterUnavailable, match="marked down") as refused:
        conn.read_pod("default", "any")
    assert refused.value.cause is UnavailableCause.BREAKER
    assert proxy.seen() == sent  # refused here, never sent


def test_dropped_connections_are_transport_failures_that_mark_the_cluster_down(
    proxied: KubeconfigProvider, proxy: FaultProxy
) -> None:
    health = fresh_health(threshold=2)
    conn = Connection(CLUSTER, proxied, health=health)
    proxy.set_mode(Drop())
    for _ in range(2):
        with pytest.raises(ClusterUnavailable) as dropped:
            conn.read_pod("default", "any")
        assert dropped.value.cause is UnavailableCause.TRANSPORT
    assert health.current() is Health.DOWN


def test_a_hanging_api_server_times_out_and_counts_against_it(
    proxied: KubeconfigProvider, proxy: FaultProxy
) -> None:
    health = fresh_health(threshold=1)
    conn = Connection(CLUSTER, proxied, ClientSettings(read_timeout_seconds=1), health=health)
    proxy.set_mode(Hang())
    with pytest.raises(ClusterUnavailable, match="read timed out"):
        conn.read_pod("default", "any")
    assert health.current() is Health.DOWN


def test_answers_about_the_request_keep_the_cluster_up(
    proxied: KubeconfigProvider, proxy: FaultProxy
) -> None:
    health = fresh_health(threshold=1)
    conn = Connection(CLUSTER, proxied, health=health)
    for status in (400, 403, 404, 409, 422):
        proxy.set_mode(Answer(status))
        with pytest.raises(ApiError):
            conn.list_pods()
    assert health.current() is Health.UP


# ----- the cache: informers through the proxy ----------------------------------------------
def restarts(reason: str = "error") -> float:
    return sum(
        sample_value(
            "dispatcher_watch_restarts_total",
            {"cluster": CLUSTER, "resource": resource, "reason": reason},
        )
        for resource in ("nodes", "pods-managed", "pods-other")
    )


def wait_until_failing_for(cache: ClusterCache, seconds: float, started: float, what: str) -> None:
    """Wait for an informer retry later than ``seconds`` after ``started``, then judge.

    That is the moment the informers' failures would have made the cluster down if they
    counted; ``tick()`` makes the cache judge its health right then.
    """
    after = started + seconds
    wait_for(lambda: time.monotonic() > after, timeout=seconds + 10, what="the window")
    count = restarts()
    wait_for(lambda: restarts() > count, timeout=30, what=what)
    cache.tick()


def watching(cache: ClusterCache, proxy: FaultProxy) -> ClusterCache:
    """The cache once each of its informers streams its watch through the proxy."""
    wait_for(lambda: proxy.streams() == len(cache.informers(CLUSTER)), what="three watches")
    return cache


def health_events(cache: ClusterCache) -> list[str]:
    seen: list[str] = []
    cache.add_listener(
        lambda cluster, kind, event, _obj: (
            seen.append(event) if kind == "health" and cluster == CLUSTER else None
        )
    )
    return seen


def test_informers_stream_through_the_proxy(
    make_cache: Callable[..., ClusterCache],
    proxied: KubeconfigProvider,
    proxy: FaultProxy,
    stack: Stack,
    namespace: str,
) -> None:
    cache = make_cache((CLUSTER,))
    added: list[str] = []
    cache.add_listener(
        lambda _c, kind, event, obj: (
            added.append(obj["metadata"]["name"])
            if kind == "pod" and event == "ADDED" and obj
            else None
        )
    )
    client.CoreV1Api(stack.kube(CLUSTER)).create_namespaced_pod(
        namespace, gpu_pod("streamed", 1, labels=managed())
    )
    wait_for(lambda: "streamed" in added, what="the watch event through the proxy")
    assert proxy.seen("pass") >= 6  # three lists and three watches


def test_a_throttling_cluster_is_degraded_never_down_and_its_retry_after_is_honoured(
    make_cache: Callable[..., ClusterCache], proxied: KubeconfigProvider, proxy: FaultProxy
) -> None:
    cache = watching(make_cache((CLUSTER,)), proxy)
    seen = health_events(cache)
    proxy.set_mode(Answer(429, retry_after=2))
    started = time.monotonic()
    assert proxy.cut_streams() == 3  # every informer reconnects, into 429s
    conn = cache.connection(CLUSTER)
    for _ in range(3 * FAST.health.failure_threshold):
        with pytest.raises(ApiError):
            conn.read_pod("default", "any")  # never refused by the breaker: each is sent
    wait_until_failing_for(
        cache, FAST.health.down_after_seconds + 1, started, "an informer retry past the window"
    )
    with pytest.raises(ApiError, match="HTTP 429"):
        conn.read_pod("default", "any")  # sent and answered, past the window too
    status = cache.status(CLUSTER)
    assert (status.health, status.reason) == (Health.DEGRADED, HealthReason.THROTTLED)
    assert "down" not in seen
    assert cache.snapshot().cluster(CLUSTER).health is Health.DEGRADED  # type: ignore[union-attr]
    # Three informers, each waiting 2 s (not its 0.2-1 s backoff) between attempts.
    elapsed = time.monotonic() - started
    by_informers = proxy.seen("answer-429") - 3 * FAST.health.failure_threshold - 1
    assert by_informers <= 3 * (elapsed / 2 + 1)

    proxy.set_mode(Pass())
    wait_for(lambda: cache.health(CLUSTER) is Health.UP, what="up again once it answers")


def test_an_api_server_answering_503_to_every_watch_is_down(
    make_cache: Callable[..., ClusterCache], proxied: KubeconfigProvider, proxy: FaultProxy
) -> None:
    cache = watching(make_cache((CLUSTER,)), proxy)
    seen = health_events(cache)
    proxy.set_mode(Answer(503))
    assert proxy.cut_streams() == 3
    # The listeners hear of a change after the state has changed: wait on the event.
    wait_for(lambda: seen[-1:] == ["down"], what="the down event")
    assert cache.health(CLUSTER) is Health.DOWN
    status = cache.status(CLUSTER)
    assert status.reason is HealthReason.UNREACHABLE
    assert "HTTP 503" in status.message

    proxy.set_mode(Pass())
    wait_for(lambda: cache.health(CLUSTER) is Health.UP, what="up again")
