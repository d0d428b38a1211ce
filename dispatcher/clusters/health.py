"""Whether a cluster is up, degraded or down, from its API errors and its watches.

``HealthMachine`` is a pure state machine: every input carries the time (``now``), nothing
reads a clock, no I/O. It combines

- a circuit breaker over requests: ``failure_threshold`` consecutive failures open it
  (down); after ``probe_after_seconds`` one request may go through as a probe (half-open);
  the probe's success closes it (up), its failure opens it again for twice as long, up to
  ``max_probe_after_seconds``. Data arriving on a watch after the wait counts as a
  successful probe, so an idle cluster recovers without anybody sending a request;
- watch state: an essential watch (nodes, our pods) disconnected for longer than
  ``down_after_seconds`` means down, since routing would look at stale capacity; any watch
  disconnected, a share of recent requests failing, or slow requests mean degraded.

``ClusterHealth`` wraps one machine with a lock and a clock for the threads of one cluster,
publishes changes with ``metrics.record_cluster_health`` and reports them to a callback.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog

from dispatcher import metrics
from dispatcher.core import Health

__all__ = ["Breaker", "ClusterHealth", "HealthMachine", "HealthPolicy"]

log = structlog.get_logger(__name__)


class Breaker(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """When a cluster counts as degraded or down, and how it is probed back."""

    #: Consecutive failed requests (transport errors, 5xx, 429) that open the breaker.
    failure_threshold: int = 5
    #: An essential watch disconnected this long marks the cluster down.
    down_after_seconds: float = 30.0
    #: First wait before a probe; doubles after each failed probe, up to the maximum.
    probe_after_seconds: float = 1.0
    max_probe_after_seconds: float = 30.0
    #: Recent requests considered for the error ratio.
    window: int = 20
    #: Share of failures among recent requests from which the cluster is degraded.
    degraded_error_ratio: float = 0.2
    #: Request latency (moving average) from which the cluster is degraded.
    slow_request_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.window < 1:
            raise ValueError("failure_threshold and window must be at least 1")
        if min(self.down_after_seconds, self.probe_after_seconds) <= 0:
            raise ValueError("down_after_seconds and probe_after_seconds must be positive")
        if self.max_probe_after_seconds < self.probe_after_seconds:
            raise ValueError("max_probe_after_seconds must be at least probe_after_seconds")


_LATENCY_WEIGHT = 0.2


class HealthMachine:
    """The health of one cluster as a function of what happened and when; pure.

    ``watches`` maps each watch name to whether it is essential. Watches start
    disconnected (since ``now``): a cluster that never answers goes down after
    ``down_after_seconds`` like one that stopped answering.
    """

    def __init__(self, policy: HealthPolicy, watches: Mapping[str, bool], now: float) -> None:
        self.policy = policy
        self.breaker = Breaker.CLOSED
        self._essential = dict(watches)
        self._down_since: dict[str, float | None] = dict.fromkeys(watches, now)
        self._consecutive = 0
        self._recent: deque[bool] = deque(maxlen=policy.window)
        self._latency: float | None = None
        self._open_for = policy.probe_after_seconds
        self._retry_at = now
        self._probe_started: float | None = None

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def retry_at(self) -> float:
        """When the open breaker lets the next probe through."""
        return self._retry_at

    # ----- requests --------------------------------------------------------------------
    def allow_request(self, now: float) -> bool:
        """Whether a request may go out now; may turn an open breaker half-open (a probe)."""
        if self.breaker is Breaker.CLOSED:
            return True
        if self.breaker is Breaker.OPEN:
            if now < self._retry_at:
                return False
            self.breaker = Breaker.HALF_OPEN
            self._probe_started = now
            return True
        # Half-open: one probe at a time; a probe that never reported is given up on.
        if self._probe_started is None or now - self._probe_started >= self._open_for:
            self._probe_started = now
            return True
        return False

    def succeeded(self, now: float, latency: float | None = None) -> None:
        self._consecutive = 0
        self._recent.append(True)
        if latency is not None:
            self._latency = (
                latency
                if self._latency is None
                else (1 - _LATENCY_WEIGHT) * self._latency + _LATENCY_WEIGHT * latency
            )
        if self.breaker is not Breaker.CLOSED:
            self._close()

    def failed(self, now: float) -> None:
        self._consecutive += 1
        self._recent.append(False)
        if self.breaker is Breaker.HALF_OPEN:
            self._open(now, self._open_for * 2)
        elif self.breaker is Breaker.CLOSED and self._consecutive >= self.policy.failure_threshold:
            self._open(now, self.policy.probe_after_seconds)

    def _open(self, now: float, wait: float) -> None:
        self.breaker = Breaker.OPEN
        self._open_for = min(wait, self.policy.max_probe_after_seconds)
        self._retry_at = now + self._open_for
        self._probe_started = None

    def _close(self) -> None:
        self.breaker = Breaker.CLOSED
        self._open_for = self.policy.probe_after_seconds
        self._probe_started = None
        # Failures from before the outage say nothing about the cluster now.
        self._recent.clear()
        self._latency = None

    # ----- watches ---------------------------------------------------------------------
    def watch_connected(self, name: str, now: float) -> None:
        self._down_since[name] = None

    def watch_disconnected(self, name: str, now: float) -> None:
        if self._down_since.get(name) is None:
            self._down_since[name] = now

    def watch_data(self, name: str, now: float) -> None:
        """A watch delivered an event: the API server serves; counts as a probe when due."""
        self._down_since[name] = None
        if self.breaker is not Breaker.CLOSED and now >= self._retry_at:
            self._consecutive = 0
            self._close()

    def disconnected_watches(self) -> dict[str, float]:
        """Watch name -> since when it is disconnected."""
        return {name: since for name, since in self._down_since.items() if since is not None}

    # ----- verdict ---------------------------------------------------------------------
    def health(self, now: float) -> Health:
        if self.breaker is not Breaker.CLOSED:
            return Health.DOWN
        down = self.disconnected_watches()
        limit = self.policy.down_after_seconds
        if any(self._essential.get(name) and now - since >= limit for name, since in down.items()):
            return Health.DOWN
        if down:
            return Health.DEGRADED
        if self._recent:
            failures = sum(1 for ok in self._recent if not ok)
            if failures / len(self._recent) >= self.policy.degraded_error_ratio:
                return Health.DEGRADED
        if self._latency is not None and self._latency >= self.policy.slow_request_seconds:
            return Health.DEGRADED
        return Health.UP


class ClusterHealth:
    """One cluster's ``HealthMachine`` shared by its threads; publishes every change.

    ``on_change(old, new)`` runs on the thread that caused the change, outside the state
    lock, one call at a time per cluster.
    """

    def __init__(
        self,
        cluster: str,
        policy: HealthPolicy,
        watches: Mapping[str, bool],
        *,
        clock: Callable[[], float],
        on_change: Callable[[Health, Health], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._notify = threading.Lock()
        self._machine = HealthMachine(policy, watches, clock())
        self._published = self._machine.health(clock())
        metrics.record_cluster_health(cluster, self._published.value)

    def _update(self, change: Callable[[HealthMachine, float], object]) -> None:
        with self._notify:
            with self._lock:
                now = self._clock()
                change(self._machine, now)
                new = self._machine.health(now)
                old, self._published = self._published, new
            if new is old:
                return
            metrics.record_cluster_health(self.cluster, new.value)
            log.info("cluster.health_changed", cluster=self.cluster, old=old.value, new=new.value)
            if self._on_change is not None:
                self._on_change(old, new)

    def allow_request(self) -> bool:
        with self._lock:
            return self._machine.allow_request(self._clock())

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when closed)."""
        with self._lock:
            if self._machine.breaker is Breaker.CLOSED:
                return 0.0
            return max(0.0, self._machine.retry_at - self._clock())

    def succeeded(self, latency: float | None = None) -> None:
        self._update(lambda machine, now: machine.succeeded(now, latency))

    def failed(self) -> None:
        self._update(lambda machine, now: machine.failed(now))

    def watch_connected(self, name: str) -> None:
        self._update(lambda machine, now: machine.watch_connected(name, now))

    def watch_disconnected(self, name: str) -> None:
        self._update(lambda machine, now: machine.watch_disconnected(name, now))

    def watch_data(self, name: str) -> None:
        # Hot path (every watch event): skip the update when it cannot change anything.
        with self._lock:
            quiet = (
                self._machine.breaker is Breaker.CLOSED
                and name not in self._machine.disconnected_watches()
            )
        if not quiet:
            self._update(lambda machine, now: machine.watch_data(name, now))

    def refresh(self) -> Health:
        """Re-evaluate time-based transitions (a watch down too long); returns the health."""
        self._update(lambda machine, now: None)
        return self.current()

    def current(self) -> Health:
        with self._lock:
            return self._published
