"""Kubernetes Pod Security Standards, checked on a task before anything is created; pure.

``violations(task, level)`` lists every field of ``task`` that the ``baseline`` or
``restricted`` standard forbids (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
as the PodSecurity admission plugin of Kubernetes 1.35 applies it, policy version ``latest``),
each at the task's own field path: ``container_security_context.privileged``,
``init_containers[0].securityContext.capabilities.add[1]``, ``security_context.sysctls[0].name``.
The level is an argument, so whoever decides it (a cluster's settings, a tenant's) calls
the same function; ``loosest`` combines levels.

Several baseline rules are kept by the task's shape already and need no check here: a
task cannot ask for host namespaces, ``hostPath`` volumes, host ports, ``procMount:
Unmasked``, probes or lifecycle hooks, Windows options, or the AppArmor and seccomp
annotations (``spec`` and ``kubeshapes`` refuse them).

``admission_problems`` adds what the dispatcher refuses whatever the level: the system
priority classes, and tolerations of taints no node the task may use carries (a
toleration of no key, of control-plane or node-condition taints). ``submission_problems``
is the check at submission: the task against the loosest level of the clusters it may
use (raised by a ``floor``, e.g. a tenant's level), plus ``admission_problems``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import Field

from dispatcher.core.kubeshapes import StrictModel
from dispatcher.core.names import LabelKey
from dispatcher.core.spec import TaskSpec, Toleration
from dispatcher.errors import Problem

if TYPE_CHECKING:
    from dispatcher.core.snapshot import ClusterInfo

__all__ = [
    "BASELINE_CAPABILITIES",
    "SAFE_SYSCTLS",
    "SYSTEM_PRIORITY_CLASSES",
    "Level",
    "PodSecurity",
    "admission_problems",
    "loosest",
    "submission_problems",
    "toleration_problems",
    "violations",
]


class Level(StrEnum):
    """A Pod Security Standard level a task is held to (``privileged`` is not offered)."""

    BASELINE = "baseline"
    RESTRICTED = "restricted"


_STRICTNESS = {Level.BASELINE: 0, Level.RESTRICTED: 1}


def loosest(levels: Iterable[Level]) -> Level:
    """The least strict of ``levels`` (``restricted`` when there are none)."""
    return min(levels, key=_STRICTNESS.__getitem__, default=Level.RESTRICTED)


class PodSecurity(StrictModel):
    """A cluster's pod security settings (``clusters[].pod_security``)."""

    #: The standard every task routed to the cluster meets; a task that breaks only
    #: ``restricted`` is routed to ``baseline`` clusters, and refused if there are none.
    level: Level = Level.BASELINE
    #: Taint keys a task may tolerate here, besides those of the cluster's own
    #: ``pod_defaults`` tolerations (e.g. ``nvidia.com/gpu``, from ``gpu_tolerations``).
    tolerable_taints: tuple[LabelKey, ...] = Field(default=(), max_length=100)


#: Capabilities ``baseline`` lets a container add.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: Capabilities ``restricted`` lets a container add (it must drop ALL).
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: Sysctls ``baseline`` allows (the kubelet's safe set, policy version latest).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    }
)
_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
#: Volume types ``restricted`` allows (of those a task can have at all).
_RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
#: Priority classes for the cluster's own components: a task preempts them otherwise.
SYSTEM_PRIORITY_CLASSES = frozenset({"system-node-critical", "system-cluster-critical"})
#: Taints a task never tolerates, whatever a cluster says: they keep pods off control-plane
#: nodes and off nodes that are not ready, unreachable, under pressure or being drained.
_NEVER_TOLERATED = (
    "node-role.kubernetes.io/",
    "node.kubernetes.io/",
    "node.cloudprovider.kubernetes.io/",
)

_PSS = "Pod Security Standard"


def _containers(task: TaskSpec) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each container's security context with its field path (``{}`` when unset)."""
    yield "container_security_context", task.container_security_context or {}
    for index, container in enumerate(task.init_containers):
        yield f"init_containers[{index}].securityContext", container.security_context or {}


def _profile_type(context: Mapping[str, Any], key: str) -> str | None:
    profile = context.get(key)
    return profile.get("type") if isinstance(profile, Mapping) else None


def _baseline_context(where: str, context: Mapping[str, Any]) -> Iterator[Problem]:
    """Rules that read one security context, pod- or container-level."""
    if _profile_type(context, "seccompProfile") == "Unconfined":
        yield Problem(
            f"{where}.seccompProfile.type",
            f"'Unconfined' is forbidden by the baseline {_PSS}; use RuntimeDefault or Localhost",
        )
    if _profile_type(context, "appArmorProfile") == "Unconfined":
        yield Problem(
            f"{where}.appArmorProfile.type",
            f"'Unconfined' is forbidden by the baseline {_PSS}; use RuntimeDefault or Localhost",
        )
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in _SELINUX_TYPES:
        yield Problem(
            f"{where}.seLinuxOptions.type",
            f"{selinux['type']!r} is forbidden by the baseline {_PSS}; allowed: "
            + ", ".join(sorted(t for t in _SELINUX_TYPES if t)),
        )
    for key in ("user", "role"):
        if selinux.get(key):
            yield Problem(
                f"{where}.seLinuxOptions.{key}",
                f"must not be set (baseline {_PSS})",
            )


def _baseline(task: TaskSpec) -> Iterator[Problem]:
    pod = task.security_context or {}
    yield from _baseline_context("security_context", pod)
    for index, sysctl in enumerate(pod.get("sysctls") or ()):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield Problem(
                f"security_context.sysctls[{index}].name",
                f"{sysctl.get('name')!r} is not a safe sysctl; the baseline {_PSS} allows "
                + ", ".join(sorted(SAFE_SYSCTLS)),
            )
    for where, context in _containers(task):
        if context.get("privileged"):
            yield Problem(
                f"{where}.privileged",
                f"privileged containers are forbidden by the baseline {_PSS}",
            )
        capabilities = context.get("capabilities") or {}
        for index, name in enumerate(capabilities.get("add") or ()):
            if name not in BASELINE_CAPABILITIES:
                yield Problem(
                    f"{where}.capabilities.add[{index}]",
                    f"{name!r} is beyond the baseline {_PSS}, which allows adding "
                    + ", ".join(sorted(BASELINE_CAPABILITIES)),
                )
        yield from _baseline_context(where, context)


def _restricted(task: TaskSpec) -> Iterator[Problem]:
    for index, volume in enumerate(task.volumes):
        kind = next((key for key in volume if key != "name"), "")
        if kind not in _RESTRICTED_VOLUMES:
            yield Problem(
                f"volumes[{index}].{kind}",
                f"{kind} volumes are forbidden by the restricted {_PSS}; allowed: "
                + ", ".join(sorted(_RESTRICTED_VOLUMES)),
            )
    pod = task.security_context or {}
    if pod.get("runAsUser") == 0:
        yield Problem(
            "security_context.runAsUser", f"0 (root) is forbidden by the restricted {_PSS}"
        )
    if pod.get("runAsNonRoot") is False:
        yield Problem("security_context.runAsNonRoot", f"must not be false (restricted {_PSS})")
    pod_non_root = pod.get("runAsNonRoot") is True
    pod_seccomp = _profile_type(pod, "seccompProfile") in ("RuntimeDefault", "Localhost")
    for where, context in _containers(task):
        if context.get("allowPrivilegeEscalation") is not False:
            yield Problem(
                f"{where}.allowPrivilegeEscalation",
                f"must be false (restricted {_PSS})",
            )
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            yield Problem(
                f"{where}.runAsNonRoot",
                f"must be true, here or in security_context.runAsNonRoot (restricted {_PSS})",
            )
        if context.get("runAsUser") == 0:
            yield Problem(f"{where}.runAsUser", f"0 (root) is forbidden by the restricted {_PSS}")
        seccomp = _profile_type(context, "seccompProfile")
        if seccomp is None and not pod_seccomp:
            yield Problem(
                f"{where}.seccompProfile.type",
                "must be RuntimeDefault or Localhost, here or in "
                f"security_context.seccompProfile (restricted {_PSS})",
            )
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or ()):
            yield Problem(
                f"{where}.capabilities.drop",
                f"must include 'ALL' (restricted {_PSS})",
            )
        for index, name in enumerate(capabilities.get("add") or ()):
            if name in BASELINE_CAPABILITIES and name not in RESTRICTED_CAPABILITIES:
                yield Problem(
                    f"{where}.capabilities.add[{index}]",
                    f"{name!r} is beyond the restricted {_PSS}, which allows adding only "
                    "NET_BIND_SERVICE",
                )


def violations(task: TaskSpec, level: Level) -> tuple[Problem, ...]:
    """Every field of ``task`` the Pod Security Standard ``level`` forbids (none: allowed)."""
    problems = list(_baseline(task))
    if level is Level.RESTRICTED:
        problems += _restricted(task)
    return tuple(dict.fromkeys(problems))


def _never_tolerated(toleration: Toleration) -> str | None:
    if not toleration.key:
        return "a toleration without a key tolerates every taint, control-plane ones included"
    if toleration.key.startswith(_NEVER_TOLERATED):
        return (
            f"{toleration.key} marks control-plane nodes or nodes that are not ready, "
            "unreachable, under pressure or being drained; a task never tolerates it"
        )
    return None


def toleration_problems(
    tolerations: Iterable[Toleration], tolerable: Iterable[str], *, where: str = "tolerations"
) -> list[Problem]:
    """Tolerations of keys outside ``tolerable`` (the taints of nodes the task may use),
    and those never allowed, each at ``where[index]``."""
    allowed = frozenset(tolerable)
    problems = []
    for index, toleration in enumerate(tolerations):
        why = _never_tolerated(toleration)
        if why is None and toleration.key not in allowed:
            why = (
                f"no cluster the task may use has nodes tainted {toleration.key}; tolerable: "
                + (", ".join(sorted(allowed)) or "none")
                + " (clusters[].pod_security.tolerable_taints)"
            )
        if why is not None:
            problems.append(Problem(f"{where}[{index}]", why))
    return problems


def admission_problems(
    task: TaskSpec, level: Level, *, tolerable_taints: Iterable[str]
) -> tuple[Problem, ...]:
    """Everything refused before a task is accepted: ``violations`` at ``level``, system
    priority classes, and tolerations of taints outside ``tolerable_taints``."""
    problems = list(violations(task, level))
    if task.priority_class_name in SYSTEM_PRIORITY_CLASSES:
        problems.append(
            Problem(
                "priority_class_name",
                f"{task.priority_class_name} is reserved for the cluster's own components",
            )
        )
    problems += toleration_problems(task.tolerations, tolerable_taints)
    return tuple(problems)


def submission_problems(
    task: TaskSpec, clusters: Iterable[ClusterInfo], *, floor: Level | None = None
) -> tuple[Problem, ...]:
    """What refuses ``task`` before anything is created, given the configured ``clusters``.

    The task must meet the loosest level among the clusters it may use (its
    ``allowed_clusters``, else all), or ``floor`` when that is stricter (a tenant's
    level); routing keeps it off clusters of a stricter level. It may tolerate the taints
    those clusters' ``pod_defaults`` tolerate and their ``pod_security.tolerable_taints``.
    """
    allowed = task.requirements.allowed_clusters
    usable = [info for info in clusters if allowed is None or info.name in allowed]
    level = loosest(info.pod_security.level for info in usable) if usable else Level.BASELINE
    if floor is not None and _STRICTNESS[floor] > _STRICTNESS[level]:
        level = floor
    tolerable = {
        key
        for info in usable
        for key in (
            *(t.key for t in info.pod_defaults.tolerations),
            *(t.key for t in info.pod_defaults.gpu_tolerations),
            *info.pod_security.tolerable_taints,
        )
        if key
    }
    return admission_problems(task, level, tolerable_taints=tolerable)
