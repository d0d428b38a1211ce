"""One leader at a time, on the real stack: two electors compete for a Lease in the plane
cluster (a fresh namespace per test) through their own ``Connection``\\ s.

Every claim is judged on what independent observers recorded: an admin watch on the Lease
(each version, with the holder's own ``acquireTime``, written before its takeover was
sent) and the wall-clock time of every ``on_started`` / ``on_stopped`` call. A leader cut
off from the API server (its credential provider raises, as a Vault outage or an urllib3
``MaxRetryError`` would) must have stopped before the other one sent its takeover; the
terms (``leaseTransitions``) must go up by exactly one per acquisition.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client import ApiClient

from dispatcher.clusters.connection import Connection
from dispatcher.dispatching.leader import LeaderElector
from dispatcher.dispatching.records import FENCE_LABEL, Fence
from dispatcher.errors import CredentialError
from dispatcher.metrics import sample_value
from dispatcher.settings import ClientSettings
from dispatcher.supervise import Supervisor
from tests.clusters.provider import KubeconfigProvider
from tests.stack import Stack, StackEnv

LEASE = "dispatcher-test"
#: Short timings (same ratios as the defaults, 15/10/2 s) so takeovers take seconds.
DURATION, DEADLINE, RETRY = 3.0, 2.0, 0.5


class FaultyProvider:
    """The stack's restricted identity, with a fault raised on demand by every request."""

    def __init__(self, inner: KubeconfigProvider) -> None:
        self.inner = inner
        self.fault: BaseException | None = None
        #: While set, requests hang here (a stuck Vault login, a paused process).
        self.hang: threading.Event | None = None
        self.requests = 0
        self._lock = threading.Condition()

    def api_client(self, cluster: str) -> ApiClient:
        with self._lock:
            self.requests += 1
            self._lock.notify_all()
        hang = self.hang
        if hang is not None:
            hang.wait(60)
        if self.fault is not None:
            raise self.fault
        return self.inner.api_client(cluster)

    def invalidate(self, cluster: str, api: ApiClient) -> None:
        self.inner.invalidate(cluster, api)

    def wait_requests(self, count: int, timeout: float = 15.0) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: self.requests >= count, timeout), (
                f"fewer than {count} requests within {timeout}s"
            )


@dataclass
class Candidate:
    """One elector and what its callbacks saw (wall-clock times)."""

    name: str
    elector: LeaderElector
    provider: FaultyProvider
    supervisor: Supervisor
    calls: list[tuple[str, float, Fence | None]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, what: str) -> None:
        with self.changed:
            self.calls.append((what, time.time(), self.elector.fence()))
            self.changed.notify_all()

    def wait_for(self, what: str, count: int = 1, timeout: float = 20.0) -> float:
        """Wall time of the ``count``-th ``what`` call."""
        with self.changed:
            ok = self.changed.wait_for(
                lambda: sum(1 for c in self.calls if c[0] == what) >= count, timeout
            )
            assert ok, f"{self.name}: no {what} #{count} within {timeout}s: {self.calls}"
            return [c[1] for c in self.calls if c[0] == what][count - 1]

    def intervals(self, until: float) -> list[tuple[float, float]]:
        """Periods during which this candidate was told it leads."""
        out, start = [], None
        for what, moment, _ in self.calls:
            if what == "started":
                start = moment
            elif what == "stopped" and start is not None:
                out.append((start, moment))
                start = None
        if start is not None:
            out.append((start, until))
        return out


class LeaseHistory:
    """Every version of the Lease, as an admin watch saw it (an independent observer)."""

    def __init__(self, stack: Stack, namespace: str) -> None:
        self.versions: list[dict[str, Any]] = []
        self.gap: BaseException | None = None
        self._stopping = False
        self._changed = threading.Condition()
        self._watch = watch.Watch()
        self._api = stack.kube("plane")
        self._namespace = namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        coordination = client.CoordinationV1Api(self._api)
        try:
            for event in self._watch.stream(
                coordination.list_namespaced_lease,
                self._namespace,
                field_selector=f"metadata.name={LEASE}",
                timeout_seconds=300,
                deserialize=False,
            ):
                obj = event["object"]  # a dict: deserialize=False
                with self._changed:
                    self.versions.append(obj)
                    self._changed.notify_all()
        except Exception as exc:
            if not self._stopping:
                self.gap = exc  # the history would be incomplete: every check fails
        else:
            if not self._stopping:
                self.gap = EOFError("the watch ended")

    def stop(self) -> None:
        self._stopping = True
        self._watch.stop()
        self._api.close()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        with self._changed:
            ok = self._changed.wait_for(lambda: any(predicate(v) for v in self.versions), timeout)
            assert ok, f"the Lease never showed {what} within {timeout}s: {self.summary()}"
            return next(v for v in self.versions if predicate(v))

    def complete(self) -> None:
        assert self.gap is None, f"the observer's watch broke: {self.gap!r}"

    def summary(self) -> list[tuple[str | None, int | None]]:
        return [
            (spec(v).get("holderIdentity"), spec(v).get("leaseTransitions")) for v in self.versions
        ]

    def check_terms(self) -> None:
        """Terms start at 1 and go up by exactly one per acquisition; releases keep them."""
        self.complete()
        holder, term = None, 0
        for version in self.versions:
            assert version["metadata"]["labels"].get(FENCE_LABEL) == "true"
            new_holder = spec(version).get("holderIdentity")
            new_term = spec(version)["leaseTransitions"]
            if new_holder and new_holder != holder:
                assert new_term == term + 1, f"acquisition without a new term: {self.summary()}"
            else:
                assert new_term == term, f"term changed without acquisition: {self.summary()}"
            holder, term = new_holder, new_term


def spec(lease: dict[str, Any]) -> dict[str, Any]:
    return lease.get("spec") or {}


def acquired_at(lease: dict[str, Any]) -> float:
    """The new holder's wall clock just before it sent its takeover."""
    return datetime.fromisoformat(spec(lease)["acquireTime"]).timestamp()


def renewed_at(lease: dict[str, Any]) -> float:
    return datetime.fromisoformat(spec(lease)["renewTime"]).timestamp()


def held_by(candidate: Candidate, term: int) -> Callable[[dict[str, Any]], bool]:
    return lambda v: (
        spec(v).get("holderIdentity") == candidate.elector.identity
        and spec(v).get("leaseTransitions") == term
    )


def round_errors() -> float:
    """Failed election rounds, whatever the error."""
    reasons = ("unreachable", "api_error", "credentials", "other")
    return sum(
        sample_value("dispatcher_leader_election_errors_total", {"reason": r}) for r in reasons
    )


def assert_never_two_leaders(*candidates: Candidate) -> None:
    now = time.time()
    periods = sorted((p, c.name) for c in candidates for p in c.intervals(now))
    for (first, a), (second, b) in itertools.pairwise(periods):
        assert first[1] < second[0], f"{a} led until {first[1]}, {b} from {second[0]}"


@pytest.fixture
def history(stack: Stack, namespace: str) -> Iterator[LeaseHistory]:
    history = LeaseHistory(stack, namespace)
    yield history
    history.stop()


@pytest.fixture
def make_candidate(stack_env: StackEnv, namespace: str) -> Iterator[Callable[..., Candidate]]:
    candidates: list[Candidate] = []

    def make(name: str, on_started: Callable[[Candidate], None] | None = None) -> Candidate:
        provider = FaultyProvider(KubeconfigProvider(stack_env))
        connection = Connection("plane", provider, ClientSettings())
        supervisor = Supervisor()
        holder: list[Candidate] = []

        def started() -> None:
            holder[0].record("started")
            if on_started is not None:
                on_started(holder[0])

        elector = LeaderElector(
            connection,
            namespace=namespace,
            name=LEASE,
            identity=f"{name}-{namespace}",
            on_started=started,
            on_stopped=lambda: holder[0].record("stopped"),
            lease_duration=DURATION,
            renew_deadline=DEADLINE,
            retry_period=RETRY,
            supervisor=supervisor,
        )
        candidate = Candidate(name, elector, provider, supervisor)
        holder.append(candidate)
        candidates.append(candidate)
        elector.start()
        return candidate

    yield make
    for candidate in candidates:
        candidate.provider.fault = None
        if candidate.provider.hang is not None:
            candidate.provider.hang.set()
        candidate.elector.stop()


def test_of_two_electors_one_leads_in_term_one_and_the_other_waits(
    make_candidate: Callable[..., Candidate], history: LeaseHistory
) -> None:
    a, b = make_candidate("a"), make_candidate("b")
    first = history.wait_for(lambda v: bool(spec(v).get("holderIdentity")), "a holder")
    leader, follower = (a, b) if first["spec"]["holderIdentity"] == a.elector.identity else (b, a)
    leader.wait_for("started")
    # The follower had its chance to (wrongly) take over once the leader has renewed for
    # longer than a lease duration.
    history.wait_for(
        lambda v: renewed_at(v) > acquired_at(first) + DURATION + 2 * RETRY,
        "renewals past a lease duration",
    )
    assert leader.elector.fence() == Fence(holder=leader.elector.identity, term=1)
    assert leader.elector.leading
    assert follower.elector.fence() is None
    assert not follower.elector.leading
    assert [c[0] for c in follower.calls] == []
    assert leader.calls[0][2] == Fence(holder=leader.elector.identity, term=1), (
        "fence() is valid when on_started runs"
    )
    history.check_terms()


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(CredentialError("Vault is sealed", cluster="plane"), id="vault"),
        pytest.param(urllib3.exceptions.MaxRetryError(None, "/apis", reason=None), id="max-retry"),
    ],
)
def test_a_leader_cut_off_stops_before_the_other_takes_over(
    make_candidate: Callable[..., Candidate], history: LeaseHistory, fault: Exception
) -> None:
    a = make_candidate("a")
    a.wait_for("started")
    b = make_candidate("b")
    b.provider.wait_requests(2)  # b has read the Lease: it follows
    errors = round_errors()

    a.provider.fault = fault
    b.wait_for("started")
    takeover = history.wait_for(held_by(b, 2), "b in term 2")

    stopped = a.wait_for("stopped")
    assert a.calls[-1][2] is None, "a's fence was gone when it was told to stop"
    assert stopped < acquired_at(takeover), "a still led when b sent its takeover"
    assert_never_two_leaders(a, b)
    assert b.elector.fence() == Fence(holder=b.elector.identity, term=2)
    assert a.elector.fence() is None
    # a survived: its election thread keeps running, counting each failed round.
    assert round_errors() > errors
    assert a.supervisor.healthy() == (True, "ok")
    assert [t.alive for t in a.supervisor.threads()] == [True]
    history.check_terms()

    # Back online, a follows b: b keeps renewing past another lease duration.
    a.provider.fault = None
    back = time.time()
    history.wait_for(
        lambda v: held_by(b, 2)(v) and renewed_at(v) > back + DURATION + 2 * RETRY,
        "b renewing a lease duration after a is back",
    )
    assert a.elector.fence() is None
    assert [c[0] for c in a.calls] == ["started", "stopped"]
    history.check_terms()


def test_a_stuck_leader_s_fence_expires_by_itself_before_the_other_takes_over(
    make_candidate: Callable[..., Candidate], history: LeaseHistory
) -> None:
    a = make_candidate("a")
    a.wait_for("started")
    b = make_candidate("b")
    b.provider.wait_requests(2)

    stuck = a.provider.requests
    a.provider.hang = threading.Event()
    a.provider.wait_requests(stuck + 1)  # a's election thread is stuck in a request
    history.wait_for(held_by(b, 2), "b in term 2")
    # a's thread never came back to step down, yet a no longer claims to lead.
    assert a.elector.fence() is None
    assert not a.elector.leading
    assert [c[0] for c in a.calls] == ["started"]

    a.provider.hang.set()
    a.wait_for("stopped")
    assert a.elector.fence() is None
    history.check_terms()


def test_a_leader_that_fails_to_start_steps_down_and_the_other_takes_over(
    make_candidate: Callable[..., Candidate], history: LeaseHistory
) -> None:
    go = threading.Event()

    def cannot_start(_: Candidate) -> None:
        assert go.wait(20)
        raise RuntimeError("reattach failed")

    errors = sample_value("dispatcher_leader_election_errors_total", {"reason": "on_started"})
    a = make_candidate("a", on_started=cannot_start)
    a.wait_for("started")
    b = make_candidate("b")
    b.provider.wait_requests(2)  # b has read the Lease: it follows
    go.set()

    stopped = a.wait_for("stopped")
    b.wait_for("started")
    takeover = history.wait_for(held_by(b, 2), "b in term 2")
    released = history.wait_for(
        lambda v: not spec(v).get("holderIdentity") and spec(v)["leaseTransitions"] == 1,
        "a's release",
    )
    assert released["spec"]["leaseTransitions"] == 1
    assert stopped < acquired_at(takeover)
    assert_never_two_leaders(a, b)
    assert a.elector.fence() is None
    assert b.elector.fence() == Fence(holder=b.elector.identity, term=2)
    assert (
        sample_value("dispatcher_leader_election_errors_total", {"reason": "on_started"})
        == errors + 1
    )
    history.check_terms()


def test_a_graceful_stop_releases_the_lease_so_the_other_takes_over_within_a_retry_period(
    make_candidate: Callable[..., Candidate], history: LeaseHistory
) -> None:
    a = make_candidate("a")
    a.wait_for("started")
    b = make_candidate("b")
    b.provider.wait_requests(2)

    asked = time.time()
    a.elector.stop()
    stopped = a.wait_for("stopped")
    takeover = history.wait_for(held_by(b, 2), "b in term 2")
    b.wait_for("started")

    assert stopped < acquired_at(takeover)
    # Without the release b would wait a whole lease duration (3 s) after a's last renew.
    # b's next round comes within a retry period; a round is two requests.
    assert acquired_at(takeover) - asked < RETRY + 1.0
    history.wait_for(
        lambda v: not spec(v).get("holderIdentity") and spec(v)["leaseTransitions"] == 1,
        "a's release (holder cleared, term kept)",
    )
    assert_never_two_leaders(a, b)
    assert a.supervisor.threads() == (), "a's election thread ended"
    history.check_terms()
