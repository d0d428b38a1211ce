"""Pod security on the real stack: the dispatcher refuses what the API server refuses.

- Agreement: for generated tasks near the ``restricted`` line, the dispatcher's verdict
  (``podsecurity.violations``) equals the API server's PodSecurity admission verdict on the
  pod it would build (server-side dry-run create in a namespace labelled
  ``pod-security.kubernetes.io/enforce``), at ``baseline`` and at ``restricted``.
- A ``hostPath`` volume, a privileged container (an init container too), a control-plane
  toleration and a system priority class are each answered 422 naming the field, and
  nothing is created in any cluster (an admin listing of every cluster's pods and of the
  job records shows only the task accepted afterwards).
- A cluster set to ``restricted`` gets no task breaking it: the task goes to a baseline
  cluster and the routing explanation says why.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dispatcher.client import ApiClientError, DispatcherClient
from dispatcher.core import JOB_ID_LABEL, Placement, PodDefaults, build_pod, managed_pods_selector
from dispatcher.core.podsecurity import Level, violations
from dispatcher.core.spec import parse_task_spec
from tests.stack import Stack
from tests.support import task, wait_until

CLUSTERS = ("plane", "gpu-a100", "gpu-h100")
Json = dict[str, Any]

RESTRICTED_CONTAINER: Json = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
    "capabilities": {"drop": ["ALL"]},
}

#: One change each, applied to a task that meets ``restricted``: (where, key, value).
#: ``None`` removes the key. Some keep it restricted, some break restricted only, some
#: break baseline too.
_CHANGES: list[tuple[str, str, Any]] = [
    ("container", "allowPrivilegeEscalation", None),
    ("container", "allowPrivilegeEscalation", True),
    ("container", "runAsNonRoot", None),
    ("container", "runAsNonRoot", False),
    ("container", "runAsUser", 0),
    ("container", "runAsUser", 1000),
    ("container", "seccompProfile", None),
    ("container", "seccompProfile", {"type": "Unconfined"}),
    ("container", "seccompProfile", {"type": "Localhost", "localhostProfile": "p.json"}),
    ("container", "capabilities", {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}),
    ("container", "capabilities", {"drop": ["ALL"], "add": ["CHOWN"]}),
    ("container", "capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
    ("container", "capabilities", {"drop": ["NET_RAW"]}),
    ("container", "privileged", True),
    ("container", "appArmorProfile", {"type": "Unconfined"}),
    ("container", "appArmorProfile", {"type": "RuntimeDefault"}),
    ("container", "seLinuxOptions", {"type": "spc_t"}),
    ("container", "seLinuxOptions", {"type": "container_t", "level": "s0:c1,c2"}),
    ("container", "seLinuxOptions", {"user": "system_u"}),
    ("pod", "runAsNonRoot", True),
    ("pod", "runAsNonRoot", False),
    ("pod", "runAsUser", 0),
    ("pod", "seccompProfile", {"type": "RuntimeDefault"}),
    ("pod", "seccompProfile", {"type": "Unconfined"}),
    ("pod", "sysctls", [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}]),
    ("pod", "sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
    ("pod", "seLinuxOptions", {"role": "sysadm_r"}),
    ("init", "privileged", True),
    ("init", "allowPrivilegeEscalation", None),
    ("init", "runAsNonRoot", None),
    ("volume", "nfs", {"server": "10.0.0.2", "path": "/data"}),
    ("volume", "persistentVolumeClaim", {"claimName": "data"}),
]


@st.composite
def near_restricted(draw: st.DrawFn) -> Json:
    """A task meeting ``restricted`` with up to three changes from ``_CHANGES``."""
    pod: Json = {}
    container = dict(RESTRICTED_CONTAINER)
    init = dict(RESTRICTED_CONTAINER)
    volume: Json = {"name": "work", "emptyDir": {}}
    with_init = draw(st.booleans())
    for where, key, value in draw(st.lists(st.sampled_from(_CHANGES), max_size=3)):
        if where == "volume":
            volume = {"name": "work", key: value}
            continue
        target = {"pod": pod, "container": container, "init": init}[where]
        if where == "init":
            with_init = True
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    if container.get("privileged"):
        container.pop("allowPrivilegeEscalation", None)  # false with privileged is invalid
    if init.get("privileged"):
        init.pop("allowPrivilegeEscalation", None)
    spec: Json = {
        "image": "busybox:1.36",
        "volumes": [volume],
        "volume_mounts": [{"name": "work", "mountPath": "/work"}],
        "container_security_context": container,
    }
    if pod:
        spec["security_context"] = pod
    if with_init:
        spec["init_containers"] = [
            {"name": "setup", "image": "busybox:1.36", "securityContext": init}
        ]
    return spec


@pytest.fixture(scope="module")
def enforcing_namespaces(stack: Stack) -> dict[Level, str]:
    """A namespace in ``plane`` per level, labelled as the shipped namespaces are (dry runs
    only: nothing is ever created in them)."""
    names = {level: f"pss-{level}-{uuid.uuid4().hex[:6]}" for level in Level}
    with stack.kube("plane") as api:
        for level, name in names.items():
            client.CoreV1Api(api).create_namespace(
                {
                    "metadata": {
                        "name": name,
                        "labels": {
                            "pod-security.kubernetes.io/enforce": str(level),
                            "pod-security.kubernetes.io/enforce-version": "latest",
                        },
                    }
                }
            )
    return names


def _apiserver_refuses(stack: Stack, namespace: str, pod: Json) -> str | None:
    """The PodSecurity refusal of a dry-run create of ``pod``, or ``None`` if admitted."""
    with stack.kube("plane") as api:
        try:
            client.CoreV1Api(api).create_namespaced_pod(
                namespace, pod, dry_run="All", field_validation="Strict"
            )
        except ApiException as exc:
            if exc.status == 403 and "violates PodSecurity" in (exc.body or ""):
                return str(json.loads(exc.body)["message"])
            raise
    return None


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=near_restricted())
def test_our_verdict_equals_the_apiservers_at_each_level(
    stack: Stack, enforcing_namespaces: dict[Level, str], document: Json
) -> None:
    spec = parse_task_spec(document)
    for level, namespace in enforcing_namespaces.items():
        pod = build_pod(
            spec,
            Placement("plane", PodDefaults(namespace=namespace)),
            job_id="j-pss",
            attempt=0,
            submitted_at=datetime.now(UTC),
        )
        ours = [str(problem) for problem in violations(spec, level)]
        theirs = _apiserver_refuses(stack, namespace, pod)
        assert bool(ours) == bool(theirs), (
            f"{level}: dispatcher says {ours or 'allowed'}, API server says "
            f"{theirs or 'allowed'}\nspec: {json.dumps(document)}"
        )


def _managed_pods(stack: Stack) -> set[str]:
    """Job ids of every pod the dispatcher made, in every namespace of every cluster."""
    found: set[str] = set()
    for cluster in CLUSTERS:
        with stack.kube(cluster) as api:
            pods = client.CoreV1Api(api).list_pod_for_all_namespaces(
                label_selector=managed_pods_selector()
            )
        found |= {p.metadata.labels.get(JOB_ID_LABEL, "") for p in pods.items}
    return found


def _records(stack: Stack, namespace: str) -> set[str]:
    """Names of the job records (DispatchJobs) in ``namespace``, read by an admin."""
    with stack.kube("plane") as api:
        listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
            "kube-dispatcher.dev", "v1", namespace, "dispatchjobs"
        )
    return {item["metadata"]["name"] for item in listed["items"]}


REFUSALS: list[tuple[str, Json, str]] = [
    (
        "host-path",
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        "volumes[0].hostPath",
    ),
    (
        "privileged",
        {"container_security_context": {"privileged": True}},
        "container_security_context.privileged",
    ),
    (
        "privileged-init",
        {
            "init_containers": [
                {"name": "setup", "image": "busybox:1.36", "securityContext": {"privileged": True}}
            ]
        },
        "init_containers[0].securityContext.privileged",
    ),
    (
        "control-plane",
        {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
        "tolerations[0]",
    ),
    ("tolerate-all", {"tolerations": [{"operator": "Exists"}]}, "tolerations[0]"),
    ("system-critical", {"priority_class_name": "system-node-critical"}, "priority_class_name"),
]


def test_each_refusal_is_a_422_naming_the_field_and_creates_nothing(
    stack: Stack, namespace: str, api: DispatcherClient
) -> None:
    for name, fields, field in REFUSALS:
        with pytest.raises(ApiClientError) as refused:
            api.submit(task(name, gpus=1, **fields))
        assert refused.value.status == 422, name
        assert field in [p["field"] for p in refused.value.problems], refused.value
    # Nothing half-made: a task submitted after the refusals runs, and once its pod
    # exists it is the only pod the dispatcher made anywhere and the only record.
    good, _ = api.submit(task("after-the-refusals", gpus=1))
    wait_until(lambda: good["id"] in _managed_pods(stack), what="the accepted task's pod")
    assert _managed_pods(stack) == {good["id"]}
    assert len(_records(stack, namespace)) == 1
    assert [job["id"] for job in api.jobs()] == [good["id"]]


def test_a_task_breaking_restricted_goes_to_a_baseline_cluster_and_says_why(
    stack: Stack, service_factory: Any
) -> None:
    service = service_factory(clusters={"plane": {"pod_security": {"level": "restricted"}}})
    with service.client() as api:
        # A CPU task prefers the in-plane cluster; as root it may not run there.
        explained = api.explain(task("as-root", container_security_context={"runAsUser": 0}))
        assert explained["cluster"] != "plane", explained
        plane = next(c for c in explained["clusters"] if c["cluster"] == "plane")
        assert plane["reason"] == "pod-security", plane
        assert "container_security_context.runAsUser" in plane["message"]
        hardened = {**RESTRICTED_CONTAINER, "runAsUser": 1000}
        assert api.explain(task("hardened", container_security_context=hardened))["cluster"] == (
            "plane"
        )
