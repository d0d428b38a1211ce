"""Tasks are held to the Kubernetes Pod Security Standards before anything is created.

The real API server's verdict on the same pods is compared in
tests/e2e/test_pod_security_on_the_stack.py; these are the rules as a specification.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dispatcher.core import Reason, Verdict, route
from dispatcher.core.podsecurity import (
    Level,
    PodSecurity,
    loosest,
    submission_problems,
    violations,
)
from tests.unit.factories import cluster, info, node, snapshot, task

#: A container that meets ``restricted``.
RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
    "capabilities": {"drop": ["ALL"]},
}


def fields(level: Level, **spec: Any) -> list[str]:
    return [problem.field for problem in violations(task(**spec), level)]


def test_a_plain_task_meets_baseline_but_not_restricted() -> None:
    assert fields(Level.BASELINE) == []
    assert fields(Level.RESTRICTED) == [
        "container_security_context.allowPrivilegeEscalation",
        "container_security_context.runAsNonRoot",
        "container_security_context.seccompProfile.type",
        "container_security_context.capabilities.drop",
    ]


def test_a_hardened_task_meets_restricted() -> None:
    assert fields(Level.RESTRICTED, container_security_context=RESTRICTED_CONTAINER) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"container_security_context": {"privileged": True}},
            "container_security_context.privileged",
        ),
        (
            {"container_security_context": {"capabilities": {"add": ["CHOWN", "SYS_ADMIN"]}}},
            "container_security_context.capabilities.add[1]",
        ),
        (
            {"security_context": {"seccompProfile": {"type": "Unconfined"}}},
            "security_context.seccompProfile.type",
        ),
        (
            {"container_security_context": {"appArmorProfile": {"type": "Unconfined"}}},
            "container_security_context.appArmorProfile.type",
        ),
        (
            {"security_context": {"seLinuxOptions": {"type": "spc_t"}}},
            "security_context.seLinuxOptions.type",
        ),
        (
            {"container_security_context": {"seLinuxOptions": {"user": "system_u"}}},
            "container_security_context.seLinuxOptions.user",
        ),
        (
            {"security_context": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
            "security_context.sysctls[0].name",
        ),
        (
            {
                "init_containers": [
                    {
                        "name": "setup",
                        "image": "busybox:1.36",
                        "securityContext": {"privileged": True},
                    }
                ]
            },
            "init_containers[0].securityContext.privileged",
        ),
    ],
)
def test_baseline_names_each_field_at_fault(spec: dict[str, Any], field: str) -> None:
    assert fields(Level.BASELINE, **spec) == [field]


def test_baseline_allows_its_capabilities_sysctls_and_selinux_types() -> None:
    assert (
        fields(
            Level.BASELINE,
            container_security_context={
                "capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN", "SYS_CHROOT"]},
                "seLinuxOptions": {"type": "container_t", "level": "s0:c1,c2"},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            security_context={"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "9"}]},
        )
        == []
    )


def test_restricted_wants_non_root_everywhere_and_no_nfs() -> None:
    init = {"name": "setup", "image": "busybox:1.36", "securityContext": RESTRICTED_CONTAINER}
    spec: dict[str, Any] = {
        "container_security_context": {
            **RESTRICTED_CONTAINER,
            "runAsNonRoot": None,
            "runAsUser": 0,
        },
        "init_containers": [init],
        "volumes": [{"name": "data", "nfs": {"server": "nfs.example", "path": "/x"}}],
    }
    assert fields(Level.RESTRICTED, **spec) == [
        "volumes[0].nfs",
        "container_security_context.runAsNonRoot",
        "container_security_context.runAsUser",
    ]
    # The pod's own runAsNonRoot and seccomp profile count for every container.
    spec["container_security_context"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
    }
    spec["security_context"] = {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
    }
    spec["volumes"] = [{"name": "data", "emptyDir": {}}]
    assert fields(Level.RESTRICTED, **spec) == []


def test_restricted_refuses_adding_baseline_capabilities_other_than_net_bind_service() -> None:
    context = {**RESTRICTED_CONTAINER, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}
    assert fields(Level.RESTRICTED, container_security_context=context) == [
        "container_security_context.capabilities.add[0]"
    ]


def test_the_loosest_level_decides_what_is_refused_at_submission() -> None:
    assert loosest([Level.RESTRICTED, Level.BASELINE]) is Level.BASELINE
    assert loosest([Level.RESTRICTED]) is Level.RESTRICTED
    restricted = replace(info("strict"), pod_security=PodSecurity(level=Level.RESTRICTED))
    plain = task()
    assert submission_problems(plain, [info("open"), restricted]) == ()
    assert [p.field for p in submission_problems(plain, [restricted])] == [
        "container_security_context.allowPrivilegeEscalation",
        "container_security_context.runAsNonRoot",
        "container_security_context.seccompProfile.type",
        "container_security_context.capabilities.drop",
    ]
    # A tenant's level raises the floor; the clusters' cannot lower it.
    assert submission_problems(plain, [info("open")], floor=Level.RESTRICTED)
    # Only the clusters the task may use count.
    assert submission_problems(
        task(requirements={"allowed_clusters": ["strict"]}), [info("open"), restricted]
    )


def test_system_priority_classes_are_refused() -> None:
    problems = submission_problems(task(priority_class_name="system-node-critical"), [info("a")])
    assert [p.field for p in problems] == ["priority_class_name"]
    assert submission_problems(task(priority_class_name="batch-low"), [info("a")]) == ()


@pytest.mark.parametrize(
    "toleration",
    [
        {"operator": "Exists"},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"},
        {"key": "example.com/dedicated", "value": "x", "effect": "NoSchedule"},
    ],
)
def test_tolerations_beyond_the_taints_of_usable_nodes_are_refused(
    toleration: dict[str, Any],
) -> None:
    problems = submission_problems(task(tolerations=[toleration]), [info("gpu")])
    assert [p.field for p in problems] == ["tolerations[0]"]


def test_the_gpu_taint_and_listed_taints_may_be_tolerated() -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    dedicated = {"key": "example.com/dedicated", "value": "x", "effect": "NoSchedule"}
    listed = replace(
        info("gpu"), pod_security=PodSecurity(tolerable_taints=("example.com/dedicated",))
    )
    assert submission_problems(task(tolerations=[gpu, dedicated]), [listed]) == ()


def test_a_task_breaking_restricted_is_routed_only_to_baseline_clusters() -> None:
    strict = replace(
        info("strict", cpu_hour=0.01), pod_security=PodSecurity(level=Level.RESTRICTED)
    )
    nodes = [node("n1")]
    state = snapshot(cluster(strict, nodes), cluster(info("open", cpu_hour=0.05), nodes))
    decision = route(task(container_security_context={"runAsUser": 0}), state)
    assert (decision.verdict, decision.cluster) == (Verdict.PLACE, "open")
    refused = decision.explain("strict")
    assert refused is not None
    assert refused.reason is Reason.POD_SECURITY
    assert "restricted Pod Security Standard" in refused.message
    assert "container_security_context.runAsUser" in refused.message
    # A task that meets restricted may go to the cheaper restricted cluster.
    hardened = task(
        container_security_context={**RESTRICTED_CONTAINER, "runAsUser": 1000},
        container_resources={"requests": {"cpu": "1"}},
    )
    assert route(hardened, state).cluster == "strict"
