"""The health state machine: breaker, probes, watch timeouts, degradation; pure.

"Down" is the API server's trouble only: transport errors, timeouts and 5xx. A 429 is an
answer; a credential problem is ours, not the cluster's.
"""

from __future__ import annotations

import pytest

from dispatcher.clusters import Breaker, HealthMachine, HealthPolicy, HealthReason, HealthStatus
from dispatcher.core import Health
from dispatcher.core.apierrors import HealthSignal

POLICY = HealthPolicy(
    failure_threshold=3,
    down_after_seconds=10,
    probe_after_seconds=1,
    max_probe_after_seconds=4,
    window=10,
    degraded_error_ratio=0.3,
    slow_request_seconds=2,
    throttled_seconds=5,
)
WATCHES = {"nodes": True, "pods-managed": True, "pods-other": False}


def connected(now: float = 0.0) -> HealthMachine:
    machine = HealthMachine(POLICY, WATCHES, now)
    for name in WATCHES:
        machine.watch_connected(name, now)
    return machine


def test_a_cluster_whose_watches_are_connected_is_up() -> None:
    assert connected().health(0) is Health.UP


def test_a_cluster_not_yet_connected_is_degraded_then_down_after_the_timeout() -> None:
    machine = HealthMachine(POLICY, WATCHES, now=0)
    assert machine.health(9.9) is Health.DEGRADED
    assert machine.health(10) is Health.DOWN


def test_consecutive_failures_open_the_breaker_and_mark_the_cluster_down() -> None:
    machine = connected()
    machine.failed(1)
    machine.failed(2)
    assert machine.health(2) is Health.DEGRADED  # errors elevated, not yet down
    machine.failed(3)
    assert machine.breaker is Breaker.OPEN
    assert machine.health(3) is Health.DOWN


def test_a_success_resets_the_consecutive_count() -> None:
    machine = connected()
    for now in (1, 2):
        machine.failed(now)
    machine.succeeded(3)
    machine.failed(4)
    machine.failed(5)
    assert machine.breaker is Breaker.CLOSED


def test_an_open_breaker_refuses_requests_until_one_probe_may_go() -> None:
    machine = connected()
    for now in (1, 2, 3):
        machine.failed(now)
    assert not machine.allow_request(3.5)
    assert machine.allow_request(4)  # the probe
    assert machine.breaker is Breaker.HALF_OPEN
    assert not machine.allow_request(4.1)  # only one probe at a time
    assert machine.health(4.1) is Health.DOWN


def test_a_successful_probe_closes_the_breaker() -> None:
    machine = connected()
    for now in (1, 2, 3):
        machine.failed(now)
    assert machine.allow_request(4)
    machine.succeeded(4.2, latency=0.1)
    assert machine.breaker is Breaker.CLOSED
    assert machine.health(4.2) is Health.UP
    assert machine.allow_request(4.3)


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_maximum() -> None:
    machine = connected()
    for now in (1, 2, 3):
        machine.failed(now)
    waits = []
    now = 3.0
    for _ in range(4):
        now = machine.retry_at
        assert machine.allow_request(now)
        machine.failed(now)
        waits.append(machine.retry_at - now)
    assert waits == [2, 4, 4, 4]


def test_a_probe_that_never_reports_back_is_given_up_on() -> None:
    machine = connected()
    for now in (1, 2, 3):
        machine.failed(now)
    assert machine.allow_request(4)
    assert not machine.allow_request(4.5)
    assert machine.allow_request(5)


def test_watch_data_after_the_wait_counts_as_a_successful_probe() -> None:
    machine = connected()
    for now in (1, 2, 3):
        machine.failed(now)
    machine.watch_data("nodes", 3.5)  # too early: still open
    assert machine.breaker is Breaker.OPEN
    machine.watch_data("nodes", 4)
    assert machine.health(4) is Health.UP


def test_an_essential_watch_down_longer_than_the_timeout_marks_the_cluster_down() -> None:
    machine = connected()
    machine.watch_disconnected("nodes", 5)
    assert machine.health(14.9) is Health.DEGRADED
    assert machine.health(15) is Health.DOWN
    machine.watch_connected("nodes", 16)
    assert machine.health(16) is Health.UP


def test_reconnect_failures_do_not_restart_the_watch_timeout() -> None:
    machine = connected()
    machine.watch_disconnected("nodes", 5)
    machine.watch_disconnected("nodes", 9)  # another failed reconnect
    assert machine.health(15) is Health.DOWN


def test_a_non_essential_watch_down_only_degrades_the_cluster() -> None:
    machine = connected()
    machine.watch_disconnected("pods-other", 0)
    assert machine.health(1000) is Health.DEGRADED


def test_a_share_of_failed_requests_degrades_the_cluster() -> None:
    machine = connected()
    for now in range(7):
        machine.succeeded(now, latency=0.01)
    for now in (7, 8):
        machine.failed(now)
        machine.succeeded(now + 0.5, latency=0.01)
    assert machine.health(9) is Health.UP  # 2 of 10 failed: below 30 %
    machine.failed(10)
    machine.succeeded(10.5, latency=0.01)
    assert machine.health(11) is Health.DEGRADED  # 3 of the last 10


def test_slow_requests_degrade_the_cluster() -> None:
    machine = connected()
    for now in range(10):
        machine.succeeded(now, latency=3.0)
    assert machine.health(10) is Health.DEGRADED


def test_the_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_probe_after_seconds"):
        HealthPolicy(probe_after_seconds=10, max_probe_after_seconds=1)
    with pytest.raises(ValueError, match="throttled_seconds"):
        HealthPolicy(throttled_seconds=-1)


# ----- 429: the server answered ------------------------------------------------------------
def test_429s_never_open_the_breaker_and_only_degrade_the_cluster() -> None:
    machine = connected()
    for now in range(100):
        machine.throttled(now, retry_after=1, message="list nodes: HTTP 429 TooManyRequests")
        assert machine.allow_request(now)
    assert machine.breaker is Breaker.CLOSED
    assert machine.status(100) == HealthStatus(
        Health.DEGRADED, HealthReason.THROTTLED, "list nodes: HTTP 429 TooManyRequests"
    )


def test_throttling_degrades_for_the_longer_of_the_policy_and_the_retry_after() -> None:
    machine = connected()
    machine.throttled(10, retry_after=1)
    assert machine.health(14.9) is Health.DEGRADED  # throttled_seconds=5
    assert machine.health(15) is Health.UP
    machine.throttled(20, retry_after=30)
    assert machine.health(49.9) is Health.DEGRADED
    assert machine.health(50) is Health.UP


def test_429s_reset_the_consecutive_failures() -> None:
    machine = connected()
    machine.failed(1)
    machine.failed(2)
    machine.throttled(3)
    machine.failed(4)
    machine.failed(5)
    assert machine.breaker is Breaker.CLOSED


def test_a_429_to_a_probe_closes_the_breaker() -> None:
    machine = connected()
    for now in (1, 2, 3):
        machine.failed(now)
    assert machine.allow_request(4)
    machine.throttled(4.1, retry_after=2)
    assert machine.breaker is Breaker.CLOSED
    assert machine.health(4.2) is Health.DEGRADED


def test_an_essential_watch_throttled_for_long_is_degraded_not_down() -> None:
    machine = connected()
    machine.watch_disconnected("nodes", 0, HealthSignal.THROTTLED, "watch nodes: HTTP 429")
    assert machine.status(1000) == HealthStatus(
        Health.DEGRADED, HealthReason.THROTTLED, "watch nodes: HTTP 429"
    )


# ----- other error answers: about the request ---------------------------------------------
def test_an_essential_watch_refused_with_a_4xx_is_degraded_not_down() -> None:
    machine = connected()
    machine.watch_disconnected("nodes", 0, HealthSignal.ANSWERED, "list nodes: HTTP 403")
    status = machine.status(1000)
    assert (status.health, status.reason) == (Health.DEGRADED, HealthReason.WATCH_DISCONNECTED)
    assert "HTTP 403" in status.message


def test_a_watch_failing_first_for_the_server_then_for_a_4xx_is_not_down() -> None:
    machine = connected()
    machine.watch_disconnected("nodes", 0, HealthSignal.FAILED, "connection refused")
    machine.watch_disconnected("nodes", 5, HealthSignal.ANSWERED, "HTTP 404")
    assert machine.health(100) is Health.DEGRADED


# ----- credentials: ours, not the cluster's ---------------------------------------------
def test_credentials_unavailable_is_its_own_state_and_says_why() -> None:
    machine = connected()
    machine.credentials_failed(1, "create pod ns/p: credentials unavailable: Vault is down")
    assert machine.status(1) == HealthStatus(
        Health.CREDENTIALS_UNAVAILABLE,
        HealthReason.CREDENTIALS,
        "credentials unavailable: create pod ns/p: credentials unavailable: Vault is down",
    )
    assert not machine.health(1).routable
    assert machine.breaker is Breaker.CLOSED
    assert machine.consecutive_failures == 0


def test_watches_failing_for_credentials_never_make_the_cluster_down() -> None:
    machine = HealthMachine(POLICY, WATCHES, now=0)  # never connected
    for now in range(0, 1000, 7):
        for name in WATCHES:
            machine.watch_disconnected(name, now, HealthSignal.CREDENTIALS, "vault: refused")
        assert machine.health(now) is Health.CREDENTIALS_UNAVAILABLE
    assert machine.breaker is Breaker.CLOSED


def test_a_request_or_a_watch_reconnection_that_gets_through_ends_a_credential_failure() -> None:
    machine = connected()
    machine.credentials_failed(1, "vault down")
    machine.succeeded(2, latency=0.01)
    assert machine.health(2) is Health.UP
    machine.credentials_failed(3, "vault down")
    machine.watch_connected("nodes", 4)
    assert machine.health(4) is Health.UP
    machine.credentials_failed(5, "vault down")
    machine.throttled(6)
    assert machine.health(6) is Health.DEGRADED
    machine.credentials_failed(7, "vault down")
    machine.failed(8, "connection refused")  # it was sent, so credentials were there
    assert machine.health(8) is Health.DEGRADED


def test_data_on_an_old_stream_does_not_end_a_credential_failure() -> None:
    machine = connected()
    machine.credentials_failed(1, "token expired and Vault is down")
    machine.watch_data("nodes", 2)
    assert machine.health(2) is Health.CREDENTIALS_UNAVAILABLE


def test_a_down_cluster_says_how_it_failed() -> None:
    machine = connected()
    for now in (1, 2, 3):
        machine.failed(now, "read pod ns/p: HTTP 503 ServiceUnavailable")
    assert machine.status(3) == HealthStatus(
        Health.DOWN,
        HealthReason.UNREACHABLE,
        "3 consecutive failures, last: read pod ns/p: HTTP 503 ServiceUnavailable",
    )
    machine = connected()
    machine.watch_disconnected("nodes", 0, HealthSignal.FAILED, "watch nodes: connection broken")
    assert machine.status(12) == HealthStatus(
        Health.DOWN,
        HealthReason.UNREACHABLE,
        "watch nodes failing for 12s: watch nodes: connection broken",
    )
