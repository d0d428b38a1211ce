"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Only the leader runs the dispatch loop; the other replicas serve what they can and answer
503 + Retry-After for the rest. A Lease held by someone else is taken over only when it
has not changed for a whole lease duration *as observed locally* (so clocks need not
agree), and every write carries the ``resourceVersion`` it read, so two candidates never
both win. A leader that cannot renew within ``renew_deadline`` steps down.

I/O: the Kubernetes API of the state cluster, through the injected ``call``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from dispatcher import metrics

log = structlog.get_logger("dispatcher.leader")

Caller = Callable[[Callable[[ApiClient], Any]], Any]


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        call: Caller,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._call = call
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = lease_duration
        self._renew_deadline = lease_duration * 2 / 3
        self._retry = lease_duration / 5
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._clock = clock
        self._wall = wall
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False
        self._last_renew = 0.0
        # What we last saw of someone else's lease, and when (local clock).
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0

    @property
    def leading(self) -> bool:
        return self._leading

    def start(self) -> None:
        metrics.LEADER.set(0)
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self._retry * 2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                held = self.try_acquire_or_renew()
            except (ApiException, OSError, ValueError) as exc:
                log.warning("leader.lease_error", error=str(exc))
                held = False
            now = self._clock()
            if held:
                self._last_renew = now
                if not self._leading:
                    self._leading = True
                    metrics.LEADER.set(1)
                    log.info("leader.started", identity=self.identity)
                    self._on_started()
            elif self._leading and now - self._last_renew > self._renew_deadline:
                self._leading = False
                metrics.LEADER.set(0)
                log.error("leader.lost", identity=self.identity)
                self._on_stopped()
                return
            self._stop.wait(self._retry)

    def try_acquire_or_renew(self) -> bool:
        """One round; True when this replica holds the lease afterwards."""

        def attempt(api: ApiClient) -> bool:
            coordination = client.CoordinationV1Api(api)
            now_wall = _micro_time(self._wall())
            try:
                lease: Any = coordination.read_namespaced_lease(
                    self._name, self._namespace, _request_timeout=(5, 10)
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body: Any = {
                    "metadata": {"name": self._name, "namespace": self._namespace},
                    "spec": {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": int(self._duration),
                        "acquireTime": now_wall,
                        "renewTime": now_wall,
                        "leaseTransitions": 0,
                    },
                }
                try:
                    coordination.create_namespaced_lease(
                        self._namespace, body, _request_timeout=(5, 10)
                    )
                except ApiException as conflict:
                    if conflict.status == 409:
                        return False
                    raise
                return True
            spec = lease.spec
            holder = spec.holder_identity or ""
            renew = str(spec.renew_time or "")
            if holder != self.identity:
                seen = (holder, renew)
                if seen != self._observed:
                    self._observed = seen
                    self._observed_at = self._clock()
                    if holder:
                        return False
                expired = self._clock() - self._observed_at >= (
                    spec.lease_duration_seconds or self._duration
                )
                if holder and not expired:
                    return False
                spec.lease_transitions = (spec.lease_transitions or 0) + 1
                spec.acquire_time = now_wall
                spec.holder_identity = self.identity
            spec.renew_time = now_wall
            spec.lease_duration_seconds = int(self._duration)
            try:
                coordination.replace_namespaced_lease(
                    self._name, self._namespace, lease, _request_timeout=(5, 10)
                )
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
            return True

        return bool(self._call(attempt))
