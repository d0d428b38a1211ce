"""The health state machine: breaker, probes, watch timeouts, degradation; pure."""

from __future__ import annotations

import pytest

from dispatcher.clusters import Breaker, HealthMachine, HealthPolicy
from dispatcher.core import Health

POLICY = HealthPolicy(
    failure_threshold=3,
    down_after_seconds=10,
    probe_after_seconds=1,
    max_probe_after_seconds=4,
    window=10,
    degraded_error_ratio=0.3,
    slow_request_seconds=2,
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
