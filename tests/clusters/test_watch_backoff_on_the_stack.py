"""Watches back off as client-go's reflector does: never a hot reconnect or relist loop
(real stack, with a fault-injecting proxy in front of gpu-h100's API server; the scripted
twin is ``test_watch_backoff.py``).

A watch the server ends at once without an event, a watch answered 410 Gone again and
again (each forcing a relist), and a list answered 410 again and again are retried after
an exponential backoff. The backoff has
no jitter here, so its waits add up to a known least time: the test waits for the fifth
watch request and checks that at least that much time went by (a hot loop sends five in a
few milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dispatcher.clusters import Connection, Informer, WatchOptions
from dispatcher.metrics import sample_value
from tests.clusters.conftest import wait_for
from tests.clusters.provider import KubeconfigProvider
from tests.faultproxy import Answer, FaultProxy, for_stack
from tests.stack import StackEnv

CLUSTER = "gpu-h100"
WATCHES = r"[?&]watch=(true|True|1)"
LISTS = r"^/api/v1/nodes(?!.*[?&]watch=)"
#: Waits of 0.2, 0.4, 0.8, 0.8, ... seconds (no jitter).
OPTIONS = WatchOptions(backoff_base_seconds=0.2, backoff_max_seconds=0.8, backoff_jitter=0.0)


@pytest.fixture
def proxy(stack_env: StackEnv) -> Iterator[FaultProxy]:
    with for_stack(stack_env, CLUSTER) as proxy:
        yield proxy


@pytest.fixture
def informer(provider: KubeconfigProvider, proxy: FaultProxy) -> Iterator[Informer]:
    provider.host_override[CLUSTER] = proxy.url
    informer = Informer(
        Connection(CLUSTER, provider),
        "nodes",
        name="nodes",
        handler=lambda kind, obj, old: None,
        options=OPTIONS,
    )
    yield informer
    informer.stop()
    informer.join(10)


def restarts(reason: str) -> float:
    return sample_value(
        "dispatcher_watch_restarts_total",
        {"cluster": CLUSTER, "resource": "nodes", "reason": reason},
    )


def test_a_watch_that_the_server_ends_at_once_is_reopened_after_a_growing_backoff(
    informer: Informer, proxy: FaultProxy
) -> None:
    # 200 with a body that holds no watch event (a bare Status): the stream ends at once.
    proxy.set_mode(Answer(200), path=WATCHES)
    short = restarts("short")
    started = time.monotonic()
    informer.start()
    wait_for(lambda: proxy.seen("answer-200") >= 5, timeout=30, what="five watch requests")
    elapsed = time.monotonic() - started
    # Four waits between five watches: 0.2 + 0.4 + 0.8 + 0.8 seconds.
    assert elapsed >= 2.2
    assert informer.synced  # the list went through; only the watches end at once
    assert restarts("short") - short >= 4


def test_watches_answered_410_again_and_again_relist_at_once_first_then_back_off(
    informer: Informer, proxy: FaultProxy
) -> None:
    proxy.set_mode(Answer(410), path=WATCHES)
    expired = restarts("expired")
    started = time.monotonic()
    informer.start()
    wait_for(lambda: proxy.seen("answer-410") >= 5, timeout=30, what="five watch requests")
    elapsed = time.monotonic() - started
    # Each 410 forces a relist: the first at once, then after 0.2, 0.4 and 0.8 seconds.
    assert elapsed >= 1.4
    assert restarts("expired") - expired >= 4


def test_a_list_answered_410_again_and_again_is_retried_at_once_first_then_backs_off(
    informer: Informer, proxy: FaultProxy
) -> None:
    # A list whose page token (or version) expired starts over: not in a hot loop.
    proxy.set_mode(Answer(410), path=LISTS)
    started = time.monotonic()
    informer.start()
    wait_for(lambda: proxy.seen("answer-410") >= 5, timeout=30, what="five list requests")
    # The first retry at once, then after 0.2, 0.4 and 0.8 seconds.
    assert time.monotonic() - started >= 1.4
    assert not informer.synced
