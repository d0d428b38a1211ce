"""The fault proxy (tests/faultproxy.py) passes a real API server through faithfully and
injects exactly the fault it is told to (real stack, gpu-h100)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from dispatcher.clusters import Connection
from dispatcher.errors import ApiError, ClusterUnavailable
from dispatcher.settings import ClientSettings
from tests.clusters.conftest import gpu_pod, wait_for
from tests.clusters.provider import KubeconfigProvider
from tests.faultproxy import Answer, Delay, FaultProxy, Hang, Pass, for_stack
from tests.stack import Stack, StackEnv

CLUSTER = "gpu-h100"


@pytest.fixture
def proxy(stack_env: StackEnv) -> Iterator[FaultProxy]:
    with for_stack(stack_env, CLUSTER) as proxy:
        yield proxy


@pytest.fixture
def conn(provider: KubeconfigProvider, proxy: FaultProxy) -> Connection:
    provider.host_override[CLUSTER] = proxy.url
    return Connection(CLUSTER, provider, ClientSettings(read_timeout_seconds=5))


def test_requests_and_followed_logs_pass_through_chunk_by_chunk(
    conn: Connection, proxy: FaultProxy, stack: Stack, namespace: str
) -> None:
    client.CoreV1Api(stack.kube(CLUSTER)).create_namespaced_pod(namespace, gpu_pod("talker", 1))
    wait_for(
        lambda: (
            (conn.read_pod(namespace, "talker") or {}).get("status", {}).get("phase") == "Running"
        ),
        what="Running",
    )
    followed = conn.pod_logs(namespace, "talker", follow=True)
    assert next(followed)  # the stream is open: later lines have not been written yet
    stack.append_container_log(CLUSTER, ["through the proxy"])
    assert "through the proxy" in followed  # arrives while the stream stays open
    assert proxy.cut_streams() >= 1
    with pytest.raises(ClusterUnavailable):
        list(followed)


def test_a_mode_applies_only_to_the_paths_it_names(conn: Connection, proxy: FaultProxy) -> None:
    proxy.set_mode(Answer(503), path=r"/pods")
    assert conn.list_nodes()
    with pytest.raises(ApiError, match="HTTP 503"):
        conn.list_pods()
    assert (proxy.seen("pass"), proxy.seen("answer-503")) == (1, 1)


def test_a_hanging_request_is_released_when_the_mode_changes(
    conn: Connection, proxy: FaultProxy
) -> None:
    proxy.set_mode(Hang())
    answered = threading.Event()

    def read() -> None:
        conn.read_pod("default", "absent")
        answered.set()

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: proxy.seen("hang") == 1, what="the request to hang")
    assert not answered.is_set()
    proxy.set_mode(Pass())  # the held request goes on to the API server
    reader.join(10)
    assert answered.is_set()
    assert proxy.seen() == 1


def test_a_delay_is_added_to_every_request(conn: Connection, proxy: FaultProxy) -> None:
    proxy.set_mode(Delay(0.3))
    started = time.monotonic()
    conn.read_pod("default", "absent")
    assert time.monotonic() - started >= 0.3
