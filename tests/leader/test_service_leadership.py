"""A ``dispatcher serve`` replica that cannot take up leadership gives the Lease back before
it exits, so another replica takes over at once instead of after the Lease expires.

On the real stack: the replica's state namespace lets it hold the Lease but not list job
records, so re-attaching (its first act as leader) fails. Judged from outside: the process's
exit code, the Lease as the apiserver holds it after the process is gone, and its
temporary directory: the client key files of a cluster reached with a client certificate
are gone too, although ``os._exit`` runs no finalizer.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kubernetes import client

from dispatcher.api.service import STEPPED_DOWN_EXIT_CODE
from tests.credentials.test_key_material import cert_kubeconfig  # noqa: F401 - a fixture
from tests.stack import Stack
from tests.stack.dispatcher_config import dispatcher_settings
from tests.stack.launcher import DISPATCHER_NAMESPACE, DISPATCHER_SA
from tests.support import ServiceProcess

LEASE = "kube-dispatcher"


@pytest.fixture
def lease_only_namespace(stack: Stack) -> str:
    """A plane namespace where the dispatcher may keep its Lease but not its records."""
    name = f"lease-only-{uuid.uuid4().hex[:6]}"
    with stack.kube("plane") as api:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
        client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
            name,
            {
                "metadata": {"name": "kube-dispatcher-tasks"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "kube-dispatcher-tasks",  # pods and leases, no dispatchjobs
                },
                "subjects": [
                    {
                        "kind": "ServiceAccount",
                        "name": DISPATCHER_SA,
                        "namespace": DISPATCHER_NAMESPACE,
                    }
                ],
            },
        )
    return name


def _fetch_of(log: str, cluster: str) -> str:
    """The log line of ``cluster``'s first credential fetch (empty if none)."""
    return next(
        (
            line
            for line in log.splitlines()
            if '"credentials.fetch"' in line and f'"cluster": "{cluster}"' in line
        ),
        "",
    )


def test_a_replica_that_cannot_start_leading_releases_the_lease_then_exits(
    stack: Stack,
    namespace: str,
    lease_only_namespace: str,
    tmp_path: Path,
    cert_kubeconfig: Path,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = tmp_path / "tmp"
    keys.mkdir()
    monkeypatch.setenv("TMPDIR", str(keys))  # where the replica's key directories go
    config = dispatcher_settings(
        stack,
        tmp_path,
        namespace=namespace,
        service={
            "leader_election": True,
            "lease_duration_seconds": 4,
            "lease_name": LEASE,
            "state_namespace": lease_only_namespace,
        },
        clusters={"gpu-a100": {"credentials": {"kubeconfig_file": {"path": str(cert_kubeconfig)}}}},
    )
    replica = ServiceProcess(config, tmp_path / "replica.log")
    replica.start()
    try:
        assert replica.proc is not None
        code = replica.proc.wait(timeout=90)  # the event: it gave up and left
    finally:
        replica.stop()
    log = replica.tail(400)
    assert code == STEPPED_DOWN_EXIT_CODE, log
    # It did have key files: gpu-a100's client authenticated with its certificate.
    assert '"client_certificate": true' in _fetch_of(log, "gpu-a100"), log
    assert list(keys.iterdir()) == [], log
    with stack.kube("plane") as api:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, lease_only_namespace)
    # It did lead (one acquisition), and nobody holds the Lease once it is gone.
    assert lease.spec.lease_transitions == 1, log
    assert not lease.spec.holder_identity, log
    assert "service.start_leading_failed" in log, log
