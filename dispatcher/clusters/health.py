"""Whether a cluster is up, degraded, down or without credentials, and why.

"Down" means the cluster's API server is in trouble, nothing else: it does not answer,
times out, or answers 5xx. Only ``Health.DOWN`` may make the dispatcher move running work
elsewhere, so nothing that is not the API server's own failure leads there:

- a 429 is an answer: it counts as a success for the breaker and keeps the cluster
  *degraded* (``throttled``) for ``throttled_seconds`` or the server's Retry-After;
- credentials we cannot get (Vault unavailable) or that the API server refuses (401 after
  one re-authentication) make the cluster ``Health.CREDENTIALS_UNAVAILABLE``: not
  routable, but the cluster and its pods may be fine. It lasts from the failure until a
  request or a watch (re)connection gets through;
- credentials our own rules refuse (a kubeconfig with an exec plugin, a server or CA other
  than the pinned one, a loopback address: ``UnavailableCause.REFUSED``) make it
  ``Health.REFUSED`` with the ``RefusalReason`` in ``HealthStatus.refusal``, until a
  request or watch gets through with a credential that passes;
- any other error answer (403, 404, 409, 422...) is about the request, and counts as the
  server being alive.

``HealthMachine`` is a pure state machine: every input carries the time (``now``), nothing
reads a clock, no I/O. It combines

- a circuit breaker over requests: ``failure_threshold`` consecutive failures (transport
  errors, 5xx) open it (down); after ``probe_after_seconds`` one request may go through as
  a probe (half-open); the probe's answer closes it (up), its failure opens it again for
  twice as long, up to ``max_probe_after_seconds``. Data arriving on a watch after the
  wait counts as a successful probe, so an idle cluster recovers without anybody sending
  a request;
- watch state: an essential watch (nodes, our pods) failing for the API server's reasons
  for longer than ``down_after_seconds`` means down, since routing would look at stale
  capacity; any watch disconnected, throttling, a share of recent requests failing, or slow
  requests mean degraded.

``status(now)`` returns a ``HealthStatus``: the health, a machine ``HealthReason`` and a
message for an SRE ("credentials unavailable: list nodes: Vault at ... is unreachable").

``ClusterHealth`` wraps one machine with a lock and a clock for the threads of one cluster,
turns errors into the machine's inputs (``dispatcher.core.apierrors.health_signal``),
publishes changes with ``metrics.record_cluster_health`` and reports them to a callback.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog
import urllib3

from dispatcher import metrics
from dispatcher.core import Health
from dispatcher.core.apierrors import HealthSignal, health_signal
from dispatcher.errors import (
    ApiError,
    ClusterError,
    ClusterUnavailable,
    CredentialError,
    KubeconfigRejected,
    RefusalReason,
)

__all__ = [
    "Breaker",
    "ClusterHealth",
    "HealthMachine",
    "HealthPolicy",
    "HealthReason",
    "HealthStatus",
]

log = structlog.get_logger(__name__)


class Breaker(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class HealthReason(StrEnum):
    """Why a cluster has its health; stable codes for metrics, logs and the API."""

    OK = "ok"
    #: DEGRADED: the API server answered 429 recently.
    THROTTLED = "throttled"
    #: DEGRADED: a watch is disconnected (not long enough, or not essential, to be down).
    WATCH_DISCONNECTED = "watch-disconnected"
    #: DEGRADED: a share of recent requests failed.
    ERRORS = "errors"
    #: DEGRADED: requests are slow.
    SLOW = "slow"
    #: DOWN: the API server does not answer, times out or answers 5xx.
    UNREACHABLE = "unreachable"
    #: CREDENTIALS_UNAVAILABLE: no usable credentials (Vault, kubeconfig) or refused (401).
    CREDENTIALS = "credentials"
    #: REFUSED: our rules refused its credentials or address (``HealthStatus.refusal``).
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """A cluster's health, why, and in words (``message`` is empty when up)."""

    health: Health
    reason: HealthReason
    message: str = ""
    #: Which rule refused the credentials (``Health.REFUSED`` only).
    refusal: RefusalReason | None = None

    def __str__(self) -> str:
        return f"{self.health.value}: {self.message}" if self.message else self.health.value


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """When a cluster counts as degraded or down, and how it is probed back."""

    #: Consecutive failed requests (transport errors, 5xx; never 429) that open the breaker.
    failure_threshold: int = 5
    #: An essential watch failing for the API server's reasons this long marks it down.
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
    #: A 429 keeps the cluster degraded this long (or for its Retry-After, if longer).
    throttled_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.window < 1:
            raise ValueError("failure_threshold and window must be at least 1")
        if min(self.down_after_seconds, self.probe_after_seconds) <= 0:
            raise ValueError("down_after_seconds and probe_after_seconds must be positive")
        if self.max_probe_after_seconds < self.probe_after_seconds:
            raise ValueError("max_probe_after_seconds must be at least probe_after_seconds")
        if self.throttled_seconds < 0:
            raise ValueError("throttled_seconds must not be negative")


_LATENCY_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class _Disconnected:
    since: float
    signal: HealthSignal
    message: str


class HealthMachine:
    """The health of one cluster as a function of what happened and when; pure.

    ``watches`` maps each watch name to whether it is essential. Watches start
    disconnected (since ``now``, as if the API server had not answered yet): a cluster
    that never answers goes down after ``down_after_seconds`` like one that stopped.
    """

    def __init__(self, policy: HealthPolicy, watches: Mapping[str, bool], now: float) -> None:
        self.policy = policy
        self.breaker = Breaker.CLOSED
        self._essential = dict(watches)
        never = _Disconnected(now, HealthSignal.FAILED, "not connected yet")
        self._down: dict[str, _Disconnected | None] = dict.fromkeys(watches, never)
        self._consecutive = 0
        self._last_failure = ""
        self._recent: deque[bool] = deque(maxlen=policy.window)
        self._latency: float | None = None
        self._open_for = policy.probe_after_seconds
        self._retry_at = now
        self._probe_started: float | None = None
        self._throttled_until: float | None = None
        self._throttled_message = ""
        self._credentials: str | None = None
        self._refused: tuple[RefusalReason, str] | None = None

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def retry_at(self) -> float:
        """When the open breaker lets the next probe through."""
        return self._retry_at

    @property
    def credentials_failing(self) -> bool:
        """Whether the last attempt to get or use credentials failed."""
        return self._credentials is not None

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
        """The API server answered (anything but 5xx and 429)."""
        self._answered()
        if latency is not None:
            self._latency = (
                latency
                if self._latency is None
                else (1 - _LATENCY_WEIGHT) * self._latency + _LATENCY_WEIGHT * latency
            )

    def throttled(self, now: float, retry_after: float | None = None, message: str = "") -> None:
        """The API server answered 429: alive, shedding load; degraded for a while."""
        self._answered()
        wait = max(retry_after or 0.0, self.policy.throttled_seconds)
        self._throttled_until = max(self._throttled_until or now, now + wait)
        self._throttled_message = message

    def failed(self, now: float, message: str = "") -> None:
        """No answer, or a 5xx: counts against the API server."""
        # A request went out, so credentials were there.
        self._credentials = None
        self._refused = None
        self._consecutive += 1
        self._last_failure = message
        self._recent.append(False)
        if self.breaker is Breaker.HALF_OPEN:
            self._open(now, self._open_for * 2)
        elif self.breaker is Breaker.CLOSED and self._consecutive >= self.policy.failure_threshold:
            self._open(now, self.policy.probe_after_seconds)

    def credentials_failed(self, now: float, message: str = "") -> None:
        """No usable credentials, or the API server refused them: says nothing about it."""
        self._credentials = message

    def refused(self, now: float, refusal: RefusalReason, message: str = "") -> None:
        """Our rules refused the credentials or the address: says nothing about the server."""
        self._refused = (refusal, message)

    def _answered(self) -> None:
        self._credentials = None
        self._refused = None
        self._consecutive = 0
        self._recent.append(True)
        if self.breaker is not Breaker.CLOSED:
            self._close()

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
        """A list or watch request of ``name`` succeeded (with fresh credentials)."""
        self._down[name] = None
        self._credentials = None
        self._refused = None

    def watch_disconnected(
        self,
        name: str,
        now: float,
        signal: HealthSignal = HealthSignal.FAILED,
        message: str = "",
        refusal: RefusalReason | None = None,
    ) -> None:
        """Watch ``name`` broke or could not be (re)opened; ``signal`` says why."""
        before = self._down.get(name)
        since = before.since if before is not None else now
        self._down[name] = _Disconnected(since, signal, message)
        if signal is HealthSignal.CREDENTIALS:
            self._credentials = message
        elif signal is HealthSignal.REFUSED:
            self._refused = (refusal or RefusalReason.INVALID, message)

    def watch_data(self, name: str, now: float) -> None:
        """A watch delivered an event: the API server serves; counts as a probe when due.

        It does not prove that credentials can be had now (the stream was opened before),
        so it leaves a credential failure standing.
        """
        self._down[name] = None
        if self.breaker is not Breaker.CLOSED and now >= self._retry_at:
            self._consecutive = 0
            self._close()

    def disconnected_watches(self) -> dict[str, float]:
        """Watch name -> since when it is disconnected."""
        return {name: down.since for name, down in self._down.items() if down is not None}

    # ----- verdict ---------------------------------------------------------------------
    def health(self, now: float) -> Health:
        return self.status(now).health

    def status(self, now: float) -> HealthStatus:
        """The health, why, and in words; rules in order of precedence."""
        if self.breaker is not Breaker.CLOSED:
            return HealthStatus(
                Health.DOWN,
                HealthReason.UNREACHABLE,
                f"{self._consecutive} consecutive failures, last: {self._last_failure}"
                if self._consecutive
                else "probing after repeated failures",
            )
        if self._refused is not None:
            refusal, message = self._refused
            return HealthStatus(Health.REFUSED, HealthReason.REFUSED, message, refusal)
        if self._credentials is not None:
            return HealthStatus(
                Health.CREDENTIALS_UNAVAILABLE,
                HealthReason.CREDENTIALS,
                f"credentials unavailable: {self._credentials}",
            )
        limit = self.policy.down_after_seconds
        down = {name: d for name, d in self._down.items() if d is not None}
        for name, d in down.items():
            if (
                self._essential.get(name)
                and d.signal is HealthSignal.FAILED
                and now - d.since >= limit
            ):
                return HealthStatus(
                    Health.DOWN,
                    HealthReason.UNREACHABLE,
                    f"watch {name} failing for {now - d.since:.0f}s: {d.message}",
                )
        throttling = [d for d in down.values() if d.signal is HealthSignal.THROTTLED]
        if throttling or (self._throttled_until is not None and now < self._throttled_until):
            message = throttling[0].message if throttling else self._throttled_message
            return HealthStatus(Health.DEGRADED, HealthReason.THROTTLED, message)
        if down:
            name, d = next(iter(down.items()))
            return HealthStatus(
                Health.DEGRADED,
                HealthReason.WATCH_DISCONNECTED,
                f"watch {name} disconnected for {now - d.since:.0f}s: {d.message}",
            )
        if self._recent:
            failures = sum(1 for ok in self._recent if not ok)
            if failures / len(self._recent) >= self.policy.degraded_error_ratio:
                return HealthStatus(
                    Health.DEGRADED,
                    HealthReason.ERRORS,
                    f"{failures} of the last {len(self._recent)} requests failed, "
                    f"last: {self._last_failure}",
                )
        if self._latency is not None and self._latency >= self.policy.slow_request_seconds:
            return HealthStatus(
                Health.DEGRADED,
                HealthReason.SLOW,
                f"requests take {self._latency:.1f}s on average",
            )
        return HealthStatus(Health.UP, HealthReason.OK)


def error_signal(error: BaseException | None) -> HealthSignal:
    """What an exception that ended a request or watch says about the API server."""
    if isinstance(error, ClusterError):
        return health_signal(error)
    if isinstance(error, KubeconfigRejected):
        return HealthSignal.REFUSED
    if isinstance(error, CredentialError):
        return HealthSignal.CREDENTIALS
    # Not translated (or no error given): counted against the server, as before.
    return HealthSignal.FAILED


def error_refusal(error: BaseException | None) -> RefusalReason | None:
    """The refusal an error carries (``ClusterUnavailable`` or ``KubeconfigRejected``)."""
    if isinstance(error, ClusterUnavailable | KubeconfigRejected):
        return error.refusal
    return None


def _words(error: BaseException | None) -> str:
    if isinstance(error, ClusterError):
        return error.detail
    if isinstance(error, CredentialError):
        return str(error)
    if isinstance(error, OSError | urllib3.exceptions.HTTPError):
        return type(error).__name__
    return "" if error is None else f"unexpected {type(error).__name__}"


class ClusterHealth:
    """One cluster's ``HealthMachine`` shared by its threads; publishes every change.

    ``on_change(old, new)`` runs on the thread that caused the change, outside the state
    lock, one call at a time per cluster; it is told about changes of health or of the
    refusal reason, not of the reason or message alone (those are published as metrics
    and logged).
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
        self._published = self._machine.status(clock())
        metrics.record_cluster_health(
            cluster, self._published.health.value, self._published.reason.value
        )
        metrics.record_cluster_refused(cluster, None)

    def _update(self, change: Callable[[HealthMachine, float], object]) -> None:
        with self._notify:
            with self._lock:
                now = self._clock()
                change(self._machine, now)
                new = self._machine.status(now)
                old, self._published = self._published, new
            if (new.health, new.reason, new.refusal) == (old.health, old.reason, old.refusal):
                return
            metrics.record_cluster_health(self.cluster, new.health.value, new.reason.value)
            metrics.record_cluster_refused(
                self.cluster, new.refusal.value if new.refusal is not None else None
            )
            log.info(
                "cluster.health_changed",
                cluster=self.cluster,
                old=old.health.value,
                new=new.health.value,
                reason=new.reason.value,
                refusal=new.refusal.value if new.refusal is not None else None,
                message=new.message,
            )
            if self._on_change is not None and (
                new.health is not old.health or new.refusal is not old.refusal
            ):
                self._on_change(old.health, new.health)

    def allow_request(self) -> bool:
        with self._lock:
            return self._machine.allow_request(self._clock())

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when closed)."""
        with self._lock:
            if self._machine.breaker is Breaker.CLOSED:
                return 0.0
            return max(0.0, self._machine.retry_at - self._clock())

    # ----- what the connection reports ---------------------------------------------------
    def succeeded(self, latency: float | None = None) -> None:
        self._update(lambda machine, now: machine.succeeded(now, latency))

    def throttled(self, retry_after: float | None = None, message: str = "") -> None:
        self._update(lambda machine, now: machine.throttled(now, retry_after, message))

    def failed(self, message: str = "") -> None:
        self._update(lambda machine, now: machine.failed(now, message))

    def credentials_failed(self, message: str = "") -> None:
        self._update(lambda machine, now: machine.credentials_failed(now, message))

    def refused(self, refusal: RefusalReason, message: str = "") -> None:
        self._update(lambda machine, now: machine.refused(now, refusal, message))

    def request_failed(self, error: ClusterError, latency: float | None = None) -> None:
        """Report a failed request by what its error says about the API server."""
        signal = health_signal(error)
        if signal is HealthSignal.ANSWERED:
            self.succeeded(latency)
        elif signal is HealthSignal.THROTTLED:
            retry_after = error.retry_after if isinstance(error, ApiError) else None
            self.throttled(retry_after, error.detail)
        elif signal is HealthSignal.FAILED:
            self.failed(error.detail)
        elif signal is HealthSignal.CREDENTIALS:
            self.credentials_failed(error.detail)
        elif signal is HealthSignal.REFUSED:
            self.refused(error_refusal(error) or RefusalReason.INVALID, error.detail)

    # ----- what the informers report -----------------------------------------------------
    def watch_connected(self, name: str) -> None:
        self._update(lambda machine, now: machine.watch_connected(name, now))

    def watch_disconnected(self, name: str, error: BaseException | None = None) -> None:
        """Watch ``name`` broke or failed to (re)open, with ``error`` saying why."""
        signal, message, refusal = error_signal(error), _words(error), error_refusal(error)
        self._update(
            lambda machine, now: machine.watch_disconnected(name, now, signal, message, refusal)
        )

    def watch_data(self, name: str) -> None:
        # Hot path (every watch event): skip the update when it cannot change anything.
        with self._lock:
            quiet = (
                self._machine.breaker is Breaker.CLOSED
                and name not in self._machine.disconnected_watches()
            )
        if not quiet:
            self._update(lambda machine, now: machine.watch_data(name, now))

    # ----- reading -----------------------------------------------------------------------
    def disconnected_watches(self) -> dict[str, float]:
        """Watch name -> since when it is disconnected (clock of this health)."""
        with self._lock:
            return self._machine.disconnected_watches()

    def refresh(self) -> Health:
        """Re-evaluate time-based transitions (a watch down too long); returns the health."""
        self._update(lambda machine, now: None)
        return self.current()

    def current(self) -> Health:
        with self._lock:
            return self._published.health

    def status(self) -> HealthStatus:
        """The last published health with its reason and message."""
        with self._lock:
            return self._published
