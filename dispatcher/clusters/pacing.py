"""How fast to talk to a cluster: a token-bucket rate limiter and exponential backoff.

``backoff_delay`` is pure (the random draw comes in as an argument). ``TokenBucket`` reads
only the clock and sleeps only through the functions it is given, so tests drive it with a
fake clock. No I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["TokenBucket", "backoff_delay"]


def backoff_delay(
    attempt: int, *, base: float, cap: float, jitter: float = 0.5, draw: float = 0.5
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Exponential, ``base * 2**(attempt - 1)`` capped at ``cap``, then shortened by up to
    ``jitter`` of itself according to ``draw`` (uniform in [0, 1)), so that many clients
    failing together do not retry together. ``attempt < 1`` means no wait.
    """
    if attempt < 1:
        return 0.0
    # Bounded exponent: 2**64 would overflow a float multiplication with a large base.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return max(0.0, ceiling * (1.0 - jitter * min(max(draw, 0.0), 1.0)))


class TokenBucket:
    """At most ``burst`` requests at once, refilled at ``qps`` per second (client-go's limiter).

    ``acquire()`` blocks the calling thread until a token is free; each caller waits for its
    own token, so one cluster's limiter never delays another cluster's requests.
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], object],
    ) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("qps must be positive and burst at least 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.qps)
        self._updated = now

    def reserve(self) -> float:
        """Take a token now, possibly borrowed from the future; returns seconds to wait."""
        with self._lock:
            self._refill(self._clock())
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def try_acquire(self) -> bool:
        """Take a token if one is free right now, without waiting."""
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def acquire(self) -> float:
        """Wait for a token; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait
