"""Pure pacing: exponential backoff with jitter, and the token-bucket rate limiter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.clusters import TokenBucket, backoff_delay


def test_backoff_doubles_from_the_base_until_the_cap_without_jitter() -> None:
    delays = [backoff_delay(n, base=0.5, cap=30, jitter=0) for n in range(1, 10)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_no_backoff_before_the_first_retry() -> None:
    assert backoff_delay(0, base=0.5, cap=30) == 0


def test_jitter_shortens_the_delay_by_at_most_its_share() -> None:
    assert backoff_delay(3, base=1, cap=30, jitter=0.5, draw=0.0) == 4
    assert backoff_delay(3, base=1, cap=30, jitter=0.5, draw=0.999999) == pytest.approx(2, 1e-5)


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_backoff_stays_between_the_jittered_floor_and_the_cap(
    attempt: int, draw: float, jitter: float
) -> None:
    delay = backoff_delay(attempt, base=0.25, cap=30, jitter=jitter, draw=draw)
    ceiling = min(30, 0.25 * 2 ** min(attempt - 1, 62))
    assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_allows_a_burst_then_paces_at_qps() -> None:
    time = FakeTime()
    bucket = TokenBucket(qps=10, burst=3, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        assert bucket.acquire() == 0
    assert time.slept == []
    waits = [bucket.acquire() for _ in range(5)]
    assert waits == pytest.approx([0.1] * 5)
    assert time.now == pytest.approx(100.5)


def test_rate_limiter_refills_while_idle_but_never_above_the_burst() -> None:
    time = FakeTime()
    bucket = TokenBucket(qps=2, burst=4, clock=time.clock, sleep=time.sleep)
    for _ in range(4):
        bucket.acquire()
    time.now += 60  # a long idle time refills only up to the burst
    assert [bucket.try_acquire() for _ in range(5)] == [True, True, True, True, False]


def test_concurrent_waiters_each_get_their_own_slot() -> None:
    time = FakeTime()
    bucket = TokenBucket(qps=5, burst=1, clock=time.clock, sleep=time.sleep)
    # Reservations made at the same instant queue up one interval apart.
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0.2, 0.4, 0.6])


def test_rate_limiter_refuses_nonsense_limits() -> None:
    time = FakeTime()
    with pytest.raises(ValueError, match="qps"):
        TokenBucket(qps=0, burst=1, clock=time.clock, sleep=time.sleep)
