"""The job-record stores under test, each with a way to change the leader and an observer
that reads what the store holds without going through it.

``KubernetesKit.elect`` writes the namespace's fence Lease with the admin client and returns
once the API server's fencing policy judges writes by the new Lease (the policy reads Leases
from an informer cache, so there is a short lag, kept in ``lags``).

I/O: the Kubernetes kit talks to the stack's `plane` API server.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from kubernetes import client

from dispatcher.dispatching.records import (
    FENCE_LABEL,
    GROUP,
    PLURAL,
    VERSION,
    Fence,
    KubernetesRecords,
    MemoryRecords,
    RecordStore,
)
from dispatcher.errors import Fenced
from tests.stack import Stack

LEASE = "kube-dispatcher-leader"
#: Longest the fencing policy may take to follow a Lease change before a test fails.
POLICY_LAG_LIMIT = 15.0


class Kit:
    """A store under test, the leader's Lease, and an independent observer."""

    name: str
    store: RecordStore
    #: Seconds each ``elect`` waited for the fencing policy to follow the Lease.
    lags: list[float]

    def elect(self, holder: str, term: int) -> Fence:
        raise NotImplementedError

    def observe(self, job_id: str) -> Any:
        """What the store holds for ``job_id``, read without the store (None: nothing)."""
        raise NotImplementedError


class MemoryKit(Kit):
    name = "memory"

    def __init__(self) -> None:
        self.memory = MemoryRecords()
        self.store = self.memory
        self.lags = []

    def elect(self, holder: str, term: int) -> Fence:
        self.memory.current_term = term
        return Fence(holder, term)

    def observe(self, job_id: str) -> Any:
        stored = self.memory.get(job_id)
        return None if stored is None else (stored.record, stored.version)


class KubernetesKit(Kit):
    name = "kubernetes"

    def __init__(
        self, stack: Stack, admin: client.ApiClient, namespace: str, store: KubernetesRecords
    ) -> None:
        self.stack = stack
        self.admin = admin
        self.namespace = namespace
        self.kubernetes = store
        self.store = store
        self.lags = []
        self._leader: Fence | None = None
        self._probes = itertools.count()

    # ----- the Lease -----------------------------------------------------------------------
    def write_lease(self, holder: str, term: int) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "labels": {FENCE_LABEL: "true"}},
            "spec": {
                "holderIdentity": holder,
                "leaseTransitions": term,
                "leaseDurationSeconds": 15,
            },
        }
        leases = client.CoordinationV1Api(self.admin)
        try:
            current = leases.read_namespaced_lease(LEASE, self.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            leases.create_namespaced_lease(self.namespace, body)
            return
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        leases.replace_namespaced_lease(LEASE, self.namespace, body)

    def elect(self, holder: str, term: int) -> Fence:
        fence = Fence(holder, term)
        self.write_lease(holder, term)
        started = time.monotonic()
        if self._leader is None:
            # Before, no Lease: everything was allowed. Wait until a stranger is refused.
            self._wait_until(Fence("a-stranger", term), refused=True)
        else:
            # The new leader is refused until the policy sees the new Lease.
            self._wait_until(fence, refused=False)
        self.lags.append(time.monotonic() - started)
        self._leader = fence
        return fence

    def _wait_until(self, fence: Fence, *, refused: bool) -> None:
        deadline = time.monotonic() + POLICY_LAG_LIMIT
        while True:
            job_id = f"probe-{next(self._probes)}-{uuid.uuid4().hex[:6]}"
            try:
                self.store.create({"id": job_id, "spec": {}}, fence)
                accepted = True
            except Fenced:
                accepted = False
            if accepted:
                self._admin_delete(job_id)
            if accepted != refused:
                return
            assert time.monotonic() < deadline, (
                f"the fencing policy did not follow the Lease within {POLICY_LAG_LIMIT}s"
            )
            time.sleep(0.02)

    # ----- the observer --------------------------------------------------------------------
    def _admin_delete(self, job_id: str) -> None:
        client.CustomObjectsApi(self.admin).delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, job_id
        )

    def raw(self, job_id: str) -> dict[str, Any] | None:
        """The DispatchJob as the admin reads it (None: absent)."""
        try:
            obj: dict[str, Any] = client.CustomObjectsApi(self.admin).get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, job_id
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return obj

    def secret(self, name: str) -> client.V1Secret | None:
        try:
            return client.CoreV1Api(self.admin).read_namespaced_secret(name, self.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return None

    def observe(self, job_id: str) -> Any:
        return self.raw(job_id)
