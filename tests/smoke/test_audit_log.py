"""The audited stack's apiservers record every request, and ``tests.stack.audit`` counts
each exactly once: a client with an identity of its own makes a known number of requests
of every verb (a watch still open and one already closed among them), and the count read
from the audit log is exactly that, none of another identity's requests included.

The log is read as the apiserver wrote it; the test waits for the client's last request
to be in it (a marker), never for a fixed time.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.stack import Stack
from tests.stack.audit import AuditLog, Request, count
from tests.support import wait_until

MARKER = "end-of-requests"


@pytest.fixture
def counted(audited_stack: Stack) -> tuple[str, str]:
    """A fresh namespace of ``plane`` and a ServiceAccount token that may use it."""
    namespace = f"audit-{uuid.uuid4().hex[:8]}"
    with audited_stack.kube("plane") as api:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        client.CoreV1Api(api).create_namespaced_service_account(
            namespace, {"metadata": {"name": "counted"}}
        )
        rbac = client.RbacAuthorizationV1Api(api)
        # A Role of its own: the aggregated ClusterRoles (admin, edit) stay empty in a
        # stack without kube-controller-manager.
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "configmaps"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "counted-configmaps"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "configmaps",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "counted", "namespace": namespace}],
            },
        )
    return namespace, audited_stack.service_account_token("plane", namespace, "counted")


def _read_until(log: AuditLog, seen: list[Request], user: str, name: str) -> bool:
    seen += log.read()
    return any(r.user == user and r.name == name for r in seen)


def _completed(log: AuditLog, audit_ids: set[str]) -> set[str]:
    """Which of ``audit_ids`` have their ResponseComplete event in the file already."""
    done = set()
    for line in log.path.read_text().splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("auditID") in audit_ids and event.get("stage") == "ResponseComplete":
            done.add(event["auditID"])
    return done


def _not_found(call: Any, *args: Any) -> None:
    with pytest.raises(ApiException) as caught:
        call(*args)
    assert caught.value.status == 404


def test_a_clients_requests_are_counted_exactly_once_from_the_audit_log(
    audited_stack: Stack, counted: tuple[str, str]
) -> None:
    namespace, token = counted
    user = f"system:serviceaccount:{namespace}:counted"
    log = AuditLog(audited_stack.audit_log("plane"))
    log.mark()
    with (
        audited_stack.kube("plane", token=token) as api,
        audited_stack.kube("plane") as admin_api,
    ):
        core, admin = client.CoreV1Api(api), client.CoreV1Api(admin_api)
        for i in range(3):
            core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{i}"}})
        for _ in range(5):
            core.read_namespaced_config_map("cm-0", namespace)
        for _ in range(4):  # another identity's requests, not to be counted as the client's
            admin.read_namespaced_config_map("cm-1", namespace)
        core.list_namespaced_config_map(namespace)
        core.list_namespaced_config_map(namespace)
        core.patch_namespaced_config_map("cm-1", namespace, {"data": {"k": "v"}})
        core.delete_namespaced_config_map("cm-2", namespace)
        _not_found(core.read_namespaced_config_map, "cm-2", namespace)
        # A watch that ends (two audit events: started, complete) ...
        closed = watch.Watch()
        for _ in closed.stream(core.list_namespaced_config_map, namespace, timeout_seconds=1):
            pass
        # ... and one still open when the log is read (one event so far: started; the
        # call returns once the apiserver has sent the response's headers).
        still_open = core.list_namespaced_config_map(
            namespace, watch=True, timeout_seconds=60, _preload_content=False
        )
        _not_found(core.read_namespaced_config_map, MARKER, namespace)

        seen: list[Request] = []
        wait_until(lambda: _read_until(log, seen, user, MARKER), timeout=30, what="the marker")
        mine = [r for r in seen if r.user == user]
        assert count(mine, by=("verb", "what")) == Counter(
            {
                ("create", "configmaps"): 3,
                ("get", "configmaps"): 5 + 1 + 1,  # cm-0 five times, deleted cm-2, the marker
                ("list", "configmaps"): 2,
                ("patch", "configmaps"): 1,
                ("delete", "configmaps"): 1,
                ("watch", "configmaps"): 2,
            }
        )
        assert sorted(r.code for r in mine if r.verb == "get" and r.code == 404) == [404, 404]
        admins = [r for r in seen if r.user == "admin" and r.namespace == namespace]
        assert count(admins, by=("verb", "name")) == Counter({("get", "cm-1"): 4})

        # The open watch ends now: its second event is not a second request.
        watches = {r.audit_id for r in mine if r.verb == "watch"}
        still_open.close()
        wait_until(
            lambda: _completed(log, watches) == watches, timeout=70, what="both watches ended"
        )
        _not_found(core.read_namespaced_config_map, f"{MARKER}-2", namespace)
        later: list[Request] = []
        wait_until(
            lambda: _read_until(log, later, user, f"{MARKER}-2"), timeout=30, what="marker 2"
        )
    assert count([r for r in later if r.user == user], by=("verb", "what")) == Counter(
        {("get", "configmaps"): 1}
    )
