"""One connection per cluster: raw JSON, paced, timed, counted, re-authenticated once
(real stack)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from kubernetes import client

from dispatcher.clusters import ClusterHealth, Connection, HealthPolicy
from dispatcher.core.apierrors import authorizer_denied
from dispatcher.errors import ApiError, ClusterUnavailable, ErrorKind, UnavailableCause
from dispatcher.metrics import sample_value
from dispatcher.settings import ClientSettings
from tests.clusters.conftest import gpu_pod, managed, wait_for
from tests.clusters.provider import KubeconfigProvider
from tests.stack import Stack, StackEnv

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

BOGUS_TOKEN = "not-a-real-token-0123456789"


def requests_counted(cluster: str, verb: str, code: str) -> float:
    return sample_value(
        "dispatcher_kube_api_requests_total", {"cluster": cluster, "verb": verb, "code": code}
    )


def test_lists_return_raw_dicts_and_every_request_is_counted_by_verb_and_code(
    provider: KubeconfigProvider, stack_env: StackEnv
) -> None:
    conn = Connection("gpu-h100", provider)
    before = requests_counted("gpu-h100", "list", "200")
    nodes = conn.list_nodes()
    assert {n["metadata"]["name"] for n in nodes} == set(stack_env.clusters["gpu-h100"].nodes)
    assert isinstance(nodes[0]["status"]["allocatable"]["nvidia.com/gpu"], str)
    assert isinstance(conn.list_pods(label_selector="app=none"), list)
    assert requests_counted("gpu-h100", "list", "200") == before + 2


def test_pods_are_created_read_logged_and_deleted(
    provider: KubeconfigProvider, namespace: str
) -> None:
    conn = Connection("gpu-a100", provider)
    created = conn.create_pod(namespace, gpu_pod("logger", 1, labels=managed()))
    assert created["metadata"]["namespace"] == namespace
    wait_for(
        lambda: (
            (conn.read_pod(namespace, "logger") or {}).get("status", {}).get("phase") == "Running"
        ),
        what="Running",
    )
    lines = list(conn.pod_logs(namespace, "logger", "main"))
    assert "step 3/3" in lines
    assert all("\n" not in line for line in lines)
    assert list(conn.pod_logs(namespace, "logger", tail_lines=1)) == [lines[-1]]
    followed = conn.pod_logs(namespace, "logger", follow=True)
    assert next(followed)  # a stream: the first line arrives before the pod ends
    followed.close()  # type: ignore[attr-defined]
    conn.delete_pod(namespace, "logger", grace_period_seconds=0)
    conn.delete_pod(namespace, "logger", grace_period_seconds=0)  # already gone: fine
    wait_for(lambda: conn.read_pod(namespace, "logger") is None, what="pod gone")


def test_api_errors_keep_the_status_and_never_echo_request_values(
    provider: KubeconfigProvider, namespace: str
) -> None:
    conn = Connection("gpu-a100", provider)
    conn.create_pod(namespace, gpu_pod("twice", 1))
    with pytest.raises(ApiError) as conflict:
        conn.create_pod(namespace, gpu_pod("twice", 1))
    assert (conflict.value.status, conflict.value.reason) == (409, "AlreadyExists")
    assert conflict.value.kind is ErrorKind.CONFLICT
    assert "twice" in str(conflict.value)

    with pytest.raises(ApiError) as forbidden:
        conn.create_pod("kube-system", gpu_pod("nope", 1))
    assert forbidden.value.status == 403
    assert forbidden.value.kind is ErrorKind.PERMANENT
    assert "cannot create resource" in str(forbidden.value)  # the apiserver's own words
    assert authorizer_denied(forbidden.value)  # who asks: retried, then another cluster


def test_a_403_of_admission_is_about_the_pod_not_the_asker(
    provider: KubeconfigProvider, stack: Stack, namespace: str
) -> None:
    # The PodSecurity admission plugin (on by default) answers 403 too, in other words.
    with stack.kube("gpu-a100") as admin:
        client.CoreV1Api(admin).patch_namespace(
            namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}
        )
    privileged = gpu_pod("privileged", 1)
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    with pytest.raises(ApiError) as refused:
        Connection("gpu-a100", provider).create_pod(namespace, privileged)
    assert refused.value.status == 403
    assert "PodSecurity" in str(refused.value)
    assert not authorizer_denied(refused.value)  # the pod is refused: no retry can help


def test_an_invalid_pod_is_a_permanent_error_naming_each_field_without_its_value(
    provider: KubeconfigProvider, namespace: str
) -> None:
    conn = Connection("gpu-a100", provider)
    invalid = gpu_pod("Invalid_Name", 1)
    container = invalid["spec"]["containers"][0]
    container["env"] = [
        {"name": "PASSWORD", "value": "hunter2-secret"},
        {"name": "hunter3=bad", "value": "x"},
    ]
    container["image"] = ""
    with pytest.raises(ApiError) as refused:
        conn.create_pod(namespace, invalid)
    error = refused.value
    assert (error.status, error.reason, error.kind) == (422, "Invalid", ErrorKind.PERMANENT)
    message = str(error)
    assert "spec.containers[0].image: Required value" in message
    assert "metadata.name: Invalid value: a lowercase RFC 1123 subdomain" in message
    assert "spec.containers[0].env[1].name: Invalid value: a valid environment variable" in (
        message
    )
    assert "Invalid value: : " not in message  # the value is cut, not left empty
    answer = message.split("HTTP 422", 1)[1]  # what the API server said (we name the pod)
    for echoed in ("hunter2", "hunter3", "Invalid_Name"):
        assert echoed not in answer


class AdminProvider:
    """The stack's admin identity: may create pods in any namespace, so a missing one is a
    404 (the restricted identity gets 403 there: authorization comes first)."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._clients: dict[str, client.ApiClient] = {}

    def api_client(self, cluster: str) -> client.ApiClient:
        if cluster not in self._clients:
            self._clients[cluster] = self._stack.kube(cluster)
        return self._clients[cluster]

    def invalidate(self, cluster: str, api: client.ApiClient) -> None:
        self._clients.pop(cluster, None)


def test_a_missing_namespace_is_a_permanent_error_saying_so(stack: Stack) -> None:
    conn = Connection("gpu-a100", AdminProvider(stack))
    with pytest.raises(ApiError) as missing:
        conn.create_pod("no-such-namespace-h3", gpu_pod("p", 1))
    assert (missing.value.status, missing.value.kind) == (404, ErrorKind.PERMANENT)
    assert 'namespaces "no-such-namespace-h3" not found' in str(missing.value)
    assert missing.value.retry_after is None


def test_a_401_invalidates_the_client_and_retries_once_with_a_fresh_one(
    stack_env: StackEnv,
) -> None:
    provider = KubeconfigProvider(stack_env)
    provider.token_override["gpu-h100"] = BOGUS_TOKEN
    invalidate = provider.invalidate

    def rotate(cluster: str, api: Any) -> None:  # the real provider re-reads Vault here
        provider.token_override.pop(cluster, None)
        invalidate(cluster, api)

    provider.invalidate = rotate  # type: ignore[method-assign]
    conn = Connection("gpu-h100", provider)
    before = requests_counted("gpu-h100", "list", "401")
    assert conn.list_nodes()
    assert provider.invalidations == ["gpu-h100"]
    assert requests_counted("gpu-h100", "list", "401") == before + 1


def test_a_second_401_is_an_api_error_without_the_token(stack_env: StackEnv) -> None:
    provider = KubeconfigProvider(stack_env)
    provider.token_override["gpu-h100"] = BOGUS_TOKEN
    conn = Connection("gpu-h100", provider)
    with pytest.raises(ApiError) as denied:
        conn.list_nodes()
    assert denied.value.status == 401
    assert denied.value.kind is ErrorKind.UNAUTHORIZED
    assert provider.invalidations == ["gpu-h100"]  # one retry, not a loop
    chain = [denied.value, denied.value.__cause__]
    assert BOGUS_TOKEN not in " ".join(repr(e) + str(e) for e in chain)


def test_an_unreachable_cluster_fails_fast_and_the_open_breaker_refuses_requests(
    stack_env: StackEnv,
) -> None:
    provider = KubeconfigProvider(stack_env)
    provider.host_override["plane"] = "https://127.0.0.1:1"
    clock = itertools.count(1000.0, 0.001)
    health = ClusterHealth(
        "plane",
        HealthPolicy(failure_threshold=2, probe_after_seconds=60, max_probe_after_seconds=60),
        {},
        clock=lambda: next(clock),
    )
    conn = Connection("plane", provider, ClientSettings(connect_timeout_seconds=1), health=health)
    for _ in range(2):
        with pytest.raises(ClusterUnavailable, match="connection refused") as unreachable:
            conn.read_pod("default", "any")
        assert unreachable.value.cause is UnavailableCause.TRANSPORT
        assert unreachable.value.kind is ErrorKind.TRANSIENT
    before = requests_counted("plane", "get", "error")
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="marked down") as refused:
        conn.read_pod("default", "any")
    assert time.monotonic() - started < 0.1
    assert refused.value.cause is UnavailableCause.BREAKER
    assert requests_counted("plane", "get", "error") == before  # nothing was sent


def test_requests_are_paced_by_the_clusters_qps(provider: KubeconfigProvider) -> None:
    conn = Connection("plane", provider, ClientSettings(qps=4, burst=4))
    started = time.monotonic()
    for _ in range(12):
        conn.read_pod("default", "absent")
    # 4 at once, then 8 more at 4 per second.
    assert time.monotonic() - started >= 1.9


def test_a_silent_connection_is_dropped_after_the_read_timeout(
    provider: KubeconfigProvider, stack: Stack, namespace: str
) -> None:
    conn = Connection("gpu-a100", provider, ClientSettings(read_timeout_seconds=1))
    client.CoreV1Api(stack.kube("gpu-a100")).create_namespaced_pod(namespace, gpu_pod("quiet", 1))
    wait_for(
        lambda: (
            (conn.read_pod(namespace, "quiet") or {}).get("status", {}).get("phase") == "Running"
        ),
        what="Running",
    )
    stream = conn.pod_logs(namespace, "quiet", follow=True, idle_timeout=1)
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="read timed out"):
        for _ in stream:
            pass
    assert time.monotonic() - started < 5
