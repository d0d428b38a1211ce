"""Tenants: who may submit what, and see whose jobs; pure, no I/O.

A ``TenantPolicy`` (one entry of the settings' ``tenants`` mapping) says what a tenant's
tasks may ask for: which clusters, target namespaces, pod service accounts, priority
classes, queue priorities and volume types, and whether the tenant may read other tenants'
jobs (``read_others``) or is an administrator (``role: admin``: sees and cancels every job).

``authorize(task, tenant, policy)`` lists every refusal at once, each at the task field at
fault and naming the setting that would allow it (``tenants.team-a.service_accounts``).
The cluster allow-list is not checked here but by routing (``cluster_allowance``), so a
decision explains it for every cluster and a tenant's task never lands elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from dispatcher.core.names import DNSLabel, DNSSubdomain
from dispatcher.core.podsecurity import Level
from dispatcher.core.spec import TaskSpec
from dispatcher.errors import Problem

__all__ = [
    "SAFE_VOLUME_TYPES",
    "ClusterAllowance",
    "Principal",
    "PriorityRange",
    "TenantPolicy",
    "authorize",
    "cluster_allowance",
    "may_manage",
    "may_read",
    "volume_types",
]

#: The volume types of the ``restricted`` Pod Security Standard: no host paths, no
#: network file systems reached from the node.
SAFE_VOLUME_TYPES: tuple[str, ...] = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
)

_CALLER = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")


def _check_caller(value: str) -> str:
    if not _CALLER.fullmatch(value):
        raise ValueError(
            f"{value!r} must be <namespace>/<serviceaccount> or <namespace>/* "
            "(a ServiceAccount of the in-plane cluster)"
        )
    return value


Caller = Annotated[str, AfterValidator(_check_caller)]


class PriorityRange(BaseModel):
    """The queue priorities (``requirements.priority``) a tenant's tasks may take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int = Field(default=-1000, ge=-1000, le=1000)
    max: int = Field(default=0, ge=-1000, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class TenantPolicy(BaseModel):
    """One tenant: who it is, and what its tasks may ask for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``admin``: sees, reads and cancels every tenant's jobs, and its tasks may name any
    #: namespace, service account, priority class and volume type (pod security and
    #: ``clusters`` still hold).
    role: Literal["member", "admin"] = "member"
    #: ServiceAccounts of the in-plane cluster that authenticate as this tenant (Kubernetes
    #: TokenReview): ``airflow/airflow-worker``, or ``airflow/*`` for every one of a
    #: namespace.
    callers: tuple[Caller, ...] = ()
    #: Clusters its tasks may run on; ``None`` (unset): every configured cluster.
    clusters: tuple[DNSLabel, ...] | None = None
    #: Namespaces a task may ask for (``namespace``); a task that names none gets the
    #: cluster's ``pod_defaults.namespace``.
    namespaces: tuple[DNSLabel, ...] = ()
    #: Pod ServiceAccounts a task may name (``service_account_name``).
    service_accounts: tuple[DNSSubdomain, ...] = ()
    #: PriorityClasses a task may name (``priority_class_name``).
    priority_classes: tuple[DNSSubdomain, ...] = ()
    priority: PriorityRange = Field(default_factory=PriorityRange)
    #: Volume types a task may use (the key of a volume besides ``name``).
    volume_types: tuple[str, ...] = SAFE_VOLUME_TYPES
    #: May read (get, list, wait, logs) other tenants' jobs; never cancel them.
    read_others: bool = False
    #: The Pod Security Standard its tasks meet wherever they run (``restricted`` holds
    #: them to it even on ``baseline`` clusters); unset: the clusters' own levels.
    pod_security: Level | None = None

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def admits(self, namespace: str, name: str) -> bool:
        """Whether ServiceAccount ``namespace/name`` authenticates as this tenant."""
        return f"{namespace}/{name}" in self.callers or f"{namespace}/*" in self.callers


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: a tenant with its policy, or (``policy`` ``None``) the caller of
    a service running without authentication, who may do everything."""

    tenant: str | None
    policy: TenantPolicy | None
    #: How it authenticated, for logs: ``token:team-a``, ``serviceaccount:airflow/worker``.
    identity: str

    @property
    def admin(self) -> bool:
        return self.policy is None or self.policy.admin


@dataclass(frozen=True, slots=True)
class ClusterAllowance:
    """The clusters a task may use, and the setting that says so (for explanations)."""

    clusters: frozenset[str]
    why: str


def cluster_allowance(
    tenant: str | None, tenants: Mapping[str, TenantPolicy] | None
) -> ClusterAllowance | None:
    """The clusters jobs of ``tenant`` may use, for routing; ``None``: any (no tenants are
    configured, the job has none, or the tenant's ``clusters`` is unset). A tenant no
    longer configured may use none."""
    if tenants is None or tenant is None:
        return None
    policy = tenants.get(tenant)
    if policy is None:
        return ClusterAllowance(frozenset(), f"tenant {tenant!r} is no longer configured")
    if policy.clusters is None:
        return None
    listed = ", ".join(policy.clusters) or "none"
    return ClusterAllowance(
        frozenset(policy.clusters),
        f"tenant {tenant!r} may use only {listed} (tenants.{tenant}.clusters)",
    )


def may_read(principal: Principal, owner: str | None) -> bool:
    """Whether ``principal`` may see a job of tenant ``owner``."""
    if principal.admin or principal.tenant == owner:
        return True
    return principal.policy is not None and principal.policy.read_others


def may_manage(principal: Principal, owner: str | None) -> bool:
    """Whether ``principal`` may cancel or acknowledge a job of tenant ``owner``."""
    return principal.admin or principal.tenant == owner


def volume_types(volume: object) -> list[str]:
    """The type keys of one volume (``hostPath``, ``emptyDir``...), ``name`` aside."""
    if not isinstance(volume, dict):
        return []
    return sorted(str(key) for key in volume if key != "name")


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"


def authorize(task: TaskSpec, tenant: str, policy: TenantPolicy) -> list[Problem]:
    """Every way ``task`` asks for more than ``tenant`` may have; empty when allowed.

    An administrator's tasks are not limited here (namespaces, service accounts, priority
    classes and volume types are the platform team's to choose); pod security and its own
    ``clusters`` still hold, as for everyone.
    """
    if policy.admin:
        return []
    setting = f"tenants.{tenant}"
    problems: list[Problem] = []
    if task.namespace is not None and task.namespace not in policy.namespaces:
        problems.append(
            Problem(
                "namespace",
                f"namespace {task.namespace!r} is not allowed for tenant {tenant!r}; "
                f"{setting}.namespaces allows it (now: {_listed(policy.namespaces)})",
            )
        )
    account = task.service_account_name
    if account is not None and account not in policy.service_accounts:
        problems.append(
            Problem(
                "service_account_name",
                f"service account {account!r} is not allowed for tenant {tenant!r}; "
                f"{setting}.service_accounts allows it (now: {_listed(policy.service_accounts)})",
            )
        )
    klass = task.priority_class_name
    if klass is not None and klass not in policy.priority_classes:
        problems.append(
            Problem(
                "priority_class_name",
                f"priority class {klass!r} is not allowed for tenant {tenant!r}; "
                f"{setting}.priority_classes allows it (now: {_listed(policy.priority_classes)})",
            )
        )
    priority = task.requirements.priority
    span = policy.priority
    if not span.min <= priority <= span.max:
        problems.append(
            Problem(
                "requirements.priority",
                f"priority {priority} is outside tenant {tenant!r}'s range "
                f"{span.min}..{span.max}; {setting}.priority sets it",
            )
        )
    for index, volume in enumerate(task.volumes):
        refused = [kind for kind in volume_types(volume) if kind not in policy.volume_types]
        if refused:
            problems.append(
                Problem(
                    f"volumes[{index}]",
                    f"volume type {', '.join(refused)} is not allowed for tenant {tenant!r}; "
                    f"{setting}.volume_types allows it (now: {_listed(policy.volume_types)})",
                )
            )
    return problems
