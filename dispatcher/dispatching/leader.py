"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go does it, and fenced.

Only the leader runs the dispatch loop; the other replicas serve what they can and answer
503 + Retry-After for the rest. Every round reads the Lease and writes it at most once,
always with the ``resourceVersion`` it read, so two candidates never both win a round.

- A candidate takes a Lease held by someone else only after the Lease has not changed
  (same ``resourceVersion``) for a whole ``lease_duration`` *as observed by its own
  monotonic clock*, counted from the first read that showed the current version; a Lease
  without holder (released) is taken at once. A Lease that does not exist is created only
  after it stayed absent for a ``lease_duration`` too (so deleting the Lease under a leader
  cannot make a second one; a new installation has its first leader after one duration).
- Each acquisition increments ``spec.leaseTransitions``; a Lease created by its first
  holder starts at 1 (so 0 is never a valid term). ``fence()`` returns ``Fence(holder,
  term)`` with that value: the term every record write carries. The Lease is labelled
  ``kube-dispatcher.dev/fence: "true"`` so the admission policy that refuses writes of an
  older term can select it.
- The leader renews every ``retry_period``. ``fence()`` turns ``None`` by itself once the
  last successful renew *was sent* more than ``renew_deadline`` ago (so a paused or cut-off
  leader stops writing without running any code); the election thread then calls
  ``on_stopped``.

Why the old leader stops before anyone else can acquire (all times on one monotonic clock
per process, no agreement between clocks needed, only that they run at about the same
rate). Let ``s`` be the moment the old leader *sent* its last successful renew: the
server applied it at some ``a >= s``. A candidate first sees that version at ``o >= a``
(its read returned after the write), and writes its takeover no sooner than ``o +
lease_duration >= s + lease_duration``; a takeover read before ``a`` fails with 409.
The old leader's ``fence()`` is ``None`` from ``s + renew_deadline``, and ``on_stopped``
runs at the latest when the round in progress ends. Each round's requests get timeouts
cut to what is left of ``s + renew_deadline`` (the connect timeout multiplied by the
client's connect retries, plus the read timeout, never exceeds it), so the election
thread is back by then. With the defaults (15 s, 10 s, 2 s) a leader tries about four
renewals before it gives up, and stops at least ``lease_duration - renew_deadline`` = 5 s
before a takeover: the margin for clock rate differences, a round blocked outside the
requests (rate limiter, a Vault login) and for ``on_stopped`` to finish. Record writes in
flight across that margin are refused by the term check.

Errors: every exception of a round is caught, logged and counted in
``dispatcher_leader_election_errors_total{reason}`` and the round is tried again after
``retry_period``; what escapes anyway is the ``Supervisor``'s (the thread restarts, after
stepping down). An exception from ``on_started`` means "cannot lead": the elector steps
down (``on_stopped``, then releases the Lease so another replica takes over at once) and
sits out a growing multiple of ``lease_duration`` before it competes again; after
``max_start_failures`` in a row its thread ends and ``/healthz`` says why. ``stop()``
steps down and releases the Lease (client-go's ``ReleaseOnCancel``): ``holderIdentity``
cleared, ``leaseTransitions`` kept. ``on_started`` runs on the election thread: it must
return promptly (start a thread for long work), as no renew is sent while it runs.

I/O: the Kubernetes API of the state cluster, through its ``Connection.request``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from kubernetes.client import ApiClient, CoordinationV1Api
from urllib3.util.retry import Retry

from dispatcher import metrics
from dispatcher.core.backoff import backoff_delay
from dispatcher.dispatching.records import FENCE_LABEL, Fence
from dispatcher.errors import (
    ApiError,
    ClusterUnavailable,
    CredentialError,
    DispatcherError,
    UnavailableCause,
)
from dispatcher.supervise import CannotContinue, SupervisedThread, Supervisor

__all__ = ["THREAD_NAME", "LeaderElector", "LeaseConnection"]

log = structlog.get_logger("dispatcher.leader")

THREAD_NAME = "kd-leader-election"

#: The version of a Lease that does not exist (never a real ``resourceVersion``).
_ABSENT = "<absent>"
#: Below this much time left, a request is not worth sending.
_MIN_REQUEST_SECONDS = 0.05
#: Share of a request's time budget given to connecting (all attempts); the rest is reading.
_CONNECT_SHARE = 1 / 3
#: urllib3's default when a client configures no retries: ``Retry(3)``.
_DEFAULT_RETRIES = 3
#: Unlimited retry counts are read as this many (no client of ours configures that).
_RETRY_CEILING = 10


class LeaseConnection(Protocol):
    """What the elector needs of the state cluster's ``Connection``."""

    cluster: str

    def request(
        self,
        verb: str,
        what: str,
        call: Callable[[ApiClient, tuple[float, float]], Any],
        *,
        gated: bool = True,
    ) -> dict[str, Any]: ...


class _OutOfTime(Exception):
    """Too little of the renew deadline is left to send another request."""


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _tries(api: Any) -> tuple[int, int]:
    """How many times one request may connect and read, given the client's urllib3 retries."""
    retries = getattr(getattr(api, "configuration", None), "retries", None)
    if retries is None:
        return _DEFAULT_RETRIES + 1, _DEFAULT_RETRIES + 1
    if isinstance(retries, bool):
        return (_DEFAULT_RETRIES + 1,) * 2 if retries else (1, 1)
    if isinstance(retries, int):
        return max(retries, 0) + 1, max(retries, 0) + 1
    if isinstance(retries, Retry):

        def limit(specific: Any) -> int:
            counts = [
                int(value)
                for value in (retries.total, specific)
                if isinstance(value, int) and not isinstance(value, bool)
            ]
            if retries.total is False:
                return 0
            return min([*counts, _RETRY_CEILING])

        return limit(retries.connect) + 1, limit(retries.read) + 1
    return _RETRY_CEILING + 1, _RETRY_CEILING + 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CredentialError) or (
        isinstance(exc, ClusterUnavailable) and exc.cause is UnavailableCause.CREDENTIALS
    ):
        return "credentials"
    if isinstance(exc, ClusterUnavailable | _OutOfTime):
        return "unreachable"
    if isinstance(exc, ApiError):
        return "api_error"
    return "other"


def _describe(exc: BaseException) -> str:
    # Our own errors carry no secret by construction; a library's message might (a URL).
    return str(exc) if isinstance(exc, DispatcherError) else type(exc).__name__


class LeaderElector:
    """Competes for one Lease on a supervised thread; see the module docstring.

    ``clock`` (monotonic) and ``wall`` (Unix time, for the Lease's timestamps) are
    injectable; ``supervisor`` runs the election thread (a private one by default, for
    tests).
    """

    def __init__(
        self,
        connection: LeaseConnection,
        *,
        namespace: str,
        name: str,
        identity: str,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        max_start_failures: int = 3,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        supervisor: Supervisor | None = None,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "leader election needs 0 < retry_period < renew_deadline < lease_duration, "
                f"got {retry_period}, {renew_deadline}, {lease_duration}"
            )
        self._connection = connection
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._max_start_failures = max_start_failures
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._clock = clock
        self._wall = wall
        self._supervisor = supervisor or Supervisor()
        self._thread: SupervisedThread | None = None
        self._what = f"lease {namespace}/{name}"
        # (fence, when the last successful renew was sent): replaced whole, read by any thread.
        self._held: tuple[Fence, float] | None = None
        # The Lease version last read while someone else held it, and when it was first seen.
        self._observed: str | None = None
        self._observed_at = 0.0
        self._start_failures = 0
        self._sit_out_until = 0.0

    # ----- what the rest of the process asks ------------------------------------------------
    def fence(self) -> Fence | None:
        """Our holder identity and term while we lead; ``None`` once the last renew is older
        than ``renew_deadline`` (even if the election thread is stuck)."""
        held = self._held
        if held is None or self._clock() - held[1] >= self.renew_deadline:
            return None
        return held[0]

    @property
    def leading(self) -> bool:
        return self.fence() is not None

    def start(self) -> None:
        metrics.LEADER.set(0)
        self._thread = self._supervisor.spawn(THREAD_NAME, self._loop)

    def stop(self, timeout: float | None = None) -> None:
        """Step down (``on_stopped``), release the Lease, end the thread."""
        thread = self._thread
        if thread is None:
            return
        thread.stop()
        thread.join(self.renew_deadline + self.retry_period if timeout is None else timeout)

    # ----- the election thread -----------------------------------------------------------------
    def _loop(self, thread: SupervisedThread) -> None:
        try:
            while not thread.stopping:
                if self._held is not None and self.fence() is None:
                    self._step_down("renew deadline passed", release=False)
                try:
                    self._round()
                except CannotContinue:
                    raise
                except Exception as exc:
                    self._round_failed(exc)
                else:
                    thread.ok()
                thread.wait(self._pause())
        finally:
            if self._held is not None:
                stopping = thread.stopping
                self._step_down(
                    "stopping" if stopping else "election loop failed", release=stopping
                )

    def _pause(self) -> float:
        """Until the next round: the retry period, or less when the deadline comes first."""
        held = self._held
        if held is None:
            return self.retry_period
        left = held[1] + self.renew_deadline - self._clock()
        return max(0.0, min(self.retry_period, left))

    def _round_failed(self, exc: Exception) -> None:
        reason = _reason(exc)
        metrics.LEADER_ELECTION_ERRORS.labels(reason=reason).inc()
        log.warning(
            "leader.round_failed",
            identity=self.identity,
            reason=reason,
            error=_describe(exc),
            leading=self.leading,
        )

    def _round(self) -> None:
        """Read the Lease and, if it is ours to renew or to take, write it once."""
        held = self._held
        start = self._clock()
        deadline = (held[1] if held else start) + self.renew_deadline
        lease = self._read(deadline, share=0.5)
        if lease is None:
            if held is not None:
                self._step_down("the Lease was deleted")
            elif self._unchanged_for_a_lease_duration(_ABSENT, self.lease_duration):
                self._create(deadline)
            return
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity") or ""
        term = int(spec.get("leaseTransitions") or 0)
        if held is not None:
            if holder == self.identity and term == held[0].term:
                sent = self._clock()
                if self._write(lease, deadline, verb="update"):
                    self._held = (held[0], sent)
                return
            self._step_down(f"the Lease is held by {holder or 'nobody'} in term {term}")
            return
        version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
        if holder and holder != self.identity:
            wait = max(self.lease_duration, float(spec.get("leaseDurationSeconds") or 0))
            if not self._unchanged_for_a_lease_duration(version, wait):
                return
        elif self._clock() < self._sit_out_until:
            return
        now = _micro_time(self._wall())
        spec.update(holderIdentity=self.identity, acquireTime=now, leaseTransitions=term + 1)
        sent = self._clock()
        if self._write(lease, deadline, verb="update"):
            self._acquired(term + 1, sent, took_from=holder)

    def _unchanged_for_a_lease_duration(self, version: str, duration: float) -> bool:
        """Whether the Lease has shown ``version`` since at least ``duration`` ago, and we
        are not sitting out after a failed start."""
        now = self._clock()
        if version != self._observed:
            self._observed, self._observed_at = version, now
            return False
        return now - self._observed_at >= duration and now >= self._sit_out_until

    def _acquired(self, term: int, sent: float, *, took_from: str = "") -> None:
        self._held = (Fence(holder=self.identity, term=term), sent)
        self._observed = None
        metrics.LEADER.set(1)
        log.info("leader.started", identity=self.identity, term=term, previous=took_from)
        try:
            self._on_started()
        except Exception as exc:
            self._start_failures += 1
            metrics.LEADER_ELECTION_ERRORS.labels(reason="on_started").inc()
            log.exception("leader.start_failed", identity=self.identity, term=term)
            self._step_down(f"on_started failed: {_describe(exc)}", release=True)
            pause = backoff_delay(
                self._start_failures,
                base=self.lease_duration,
                cap=self.lease_duration * 8,
                jitter=0.0,
            )
            self._sit_out_until = self._clock() + pause
            if self._start_failures >= self._max_start_failures:
                raise CannotContinue(
                    f"could not start leading {self._start_failures} times in a row "
                    f"(last: {_describe(exc)})"
                ) from exc
            return
        self._start_failures = 0

    def _step_down(self, reason: str, *, release: bool = False) -> None:
        """Stop leading: ``fence()`` is ``None`` from here, then ``on_stopped``, then release."""
        held = self._held
        if held is None:
            return
        self._held = None
        self._observed = None
        metrics.LEADER.set(0)
        log.warning("leader.stopped", identity=self.identity, term=held[0].term, reason=reason)
        try:
            self._on_stopped()
        except Exception:
            metrics.LEADER_ELECTION_ERRORS.labels(reason="on_stopped").inc()
            log.exception("leader.on_stopped_failed", identity=self.identity)
        if release:
            try:
                self._release(held[0])
            except Exception as exc:
                self._round_failed(exc)

    def _release(self, fence: Fence) -> None:
        deadline = self._clock() + self.renew_deadline
        lease = self._read(deadline, share=0.5)
        if lease is None:
            return
        spec = lease.setdefault("spec", {})
        if spec.get("holderIdentity") != fence.holder:
            return
        if int(spec.get("leaseTransitions") or 0) != fence.term:
            return
        now = _micro_time(self._wall())
        spec.update(holderIdentity=None, leaseDurationSeconds=1, acquireTime=now)
        if self._write(lease, deadline, verb="update", renew=False):
            log.info("leader.released", identity=self.identity, term=fence.term)

    # ----- requests -----------------------------------------------------------------------------
    def _timeout(
        self, api: Any, default: tuple[float, float], deadline: float, share: float
    ) -> tuple[float, float]:
        """``(connect, read)`` such that every try of one request ends by its share of what
        is left before ``deadline``."""
        left = max(0.0, deadline - self._clock()) * share
        connects, reads = _tries(api)
        connect = min(default[0], left * _CONNECT_SHARE / connects)
        read = min(default[1], left * (1 - _CONNECT_SHARE) / reads)
        return (max(connect, 0.001), max(read, 0.001))

    def _check_time(self, deadline: float) -> None:
        if deadline - self._clock() < _MIN_REQUEST_SECONDS:
            raise _OutOfTime("no time left before the renew deadline")

    def _read(self, deadline: float, *, share: float) -> dict[str, Any] | None:
        self._check_time(deadline)

        def call(api: ApiClient, timeout: tuple[float, float]) -> Any:
            return CoordinationV1Api(api).read_namespaced_lease(
                self._name,
                self._namespace,
                _preload_content=False,
                _request_timeout=self._timeout(api, timeout, deadline, share),
            )

        try:
            return self._connection.request("get", f"read {self._what}", call, gated=False)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _create(self, deadline: float) -> None:
        now = _micro_time(self._wall())
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": {
                "holderIdentity": self.identity,
                "acquireTime": now,
                "leaseTransitions": 1,
            },
        }
        sent = self._clock()
        if self._write(body, deadline, verb="create"):
            self._acquired(1, sent)

    def _write(
        self, lease: dict[str, Any], deadline: float, *, verb: str, renew: bool = True
    ) -> bool:
        """Create or replace (with the read ``resourceVersion``); ``False`` on a conflict."""
        self._check_time(deadline)
        metadata = lease.setdefault("metadata", {})
        metadata["labels"] = {**(metadata.get("labels") or {}), FENCE_LABEL: "true"}
        spec = lease.setdefault("spec", {})
        if renew:
            spec["renewTime"] = _micro_time(self._wall())
            spec["leaseDurationSeconds"] = math.ceil(self.lease_duration)

        # The client converts a JSON dict the same way as its own model.
        body: Any = lease

        def call(api: ApiClient, timeout: tuple[float, float]) -> Any:
            coordination = CoordinationV1Api(api)
            limit = self._timeout(api, timeout, deadline, 1.0)
            if verb == "create":
                return coordination.create_namespaced_lease(
                    self._namespace, body, _preload_content=False, _request_timeout=limit
                )
            return coordination.replace_namespaced_lease(
                self._name, self._namespace, body, _preload_content=False, _request_timeout=limit
            )

        try:
            self._connection.request(verb, f"{verb} {self._what}", call, gated=False)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True
