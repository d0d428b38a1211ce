"""Capped exponential backoff with jitter, as a pure function (no clock, no random source).

Every retry loop of the process (launch retries, thread restarts, record writes) asks this
function how long to wait, so they all back off the same way. The caller passes the random
draw in ``[0, 1)``: the simulation test makes it deterministic, production passes
``random.random()``.
"""

from __future__ import annotations

__all__ = ["backoff_delay"]


def backoff_delay(
    failures: int,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    jitter: float = 0.2,
    draw: float = 0.5,
) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1 for the first).

    ``base * 2**(failures-1)``, capped at ``cap``, then spread by ``±jitter`` (a fraction)
    according to ``draw`` so that many retriers do not wake together. Never negative and
    never above ``cap * (1 + jitter)``.
    """
    if failures <= 0:
        return 0.0
    # 2**failures overflows a float long before it matters; cap the exponent first.
    exponent = min(failures - 1, 62)
    delay = min(cap, base * float(2**exponent))
    spread = delay * jitter * (2.0 * min(max(draw, 0.0), 1.0) - 1.0)
    return max(0.0, delay + spread)
