"""What a task asks for: ``TaskSpec`` and its routing ``Requirements``; pure, no I/O.

Field names follow Airflow's KubernetesPodOperator (``image``, ``cmds``, ``arguments``,
``env_vars``, ``container_resources``, ``on_finish_action``...) so a DAG author moves over
by changing an import. Nested Kubernetes objects (tolerations, affinity, ``valueFrom``,
volumes, volume mounts) are accepted in the API's own camelCase JSON shape, and snake_case
is accepted too; each is checked by its strict shape in ``kubeshapes`` and kept in the
API's form, and problems inside them are reported at the API's field path.

Validation is strict and complete: everything the API server (or the kubelet, for image
references) would refuse later is refused here, every problem at once, each at its field
path (``container_resources.limits[nvidia.com/gpu]``,
``affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey``).
tests/e2e/test_bad_input.py checks accepted specs against a real API server. Sizes are
bounded so that a spec always fits in a job record.

What routing does not evaluate: inter-pod (anti-)affinity needs the other pods, which the
snapshot does not hold; it is checked for shape and enforced by each cluster's scheduler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dispatcher.core import quantity
from dispatcher.core.kubeshapes import (
    TASK_CONTAINER,
    Affinity,
    ContainerPort,
    EnvFromSource,
    EnvVar,
    HostAlias,
    JsonObject,
    KubeModel,
    NodeAffinity,
    NodeSelector,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PodDNSConfig,
    PodSecurityContext,
    SecurityContext,
    SelectorOperator,
    StrictModel,
    TaintEffect,
    Toleration,
    TolerationOperator,
    Volume,
    VolumeMount,
    canonical,
    check_image_reference,
    port_problems,
)
from dispatcher.core.names import (
    DNSLabel,
    DNSSubdomain,
    LabelKey,
    LabelValue,
    check_label_key,
)
from dispatcher.core.xcom import XCOM_DIRECTORY, XCOM_SIDECAR_NAME, XCOM_VOLUME
from dispatcher.errors import Problem, SpecError

__all__ = [
    "RESERVED_PREFIX",
    "Affinity",
    "ClusterHints",
    "EnvVar",
    "InitContainer",
    "NodeAffinity",
    "NodeSelector",
    "NodeSelectorRequirement",
    "NodeSelectorTerm",
    "OnFinishAction",
    "PodDefaults",
    "Requirements",
    "ResourceRequirements",
    "SelectorOperator",
    "TaintEffect",
    "TaskSpec",
    "Toleration",
    "TolerationOperator",
    "parse_task_spec",
]

#: Label and annotation keys under this prefix belong to the dispatcher (job identity,
#: stored spec); a task may not set them.
RESERVED_PREFIX = "kube-dispatcher.dev/"

MAX_ENV_VARS = 500
MAX_ARGS = 1000
MAX_LABELS = 64
MAX_ANNOTATIONS_BYTES = 64 * 1024
#: The whole spec is stored in the job record (an API object, at most ~1.5 MiB in etcd);
#: the bound keeps records small, far below that.
MAX_SPEC_BYTES = 128 * 1024
MAX_VOLUMES = 100
MAX_ENV_FROM = 100
MAX_INIT_CONTAINERS = 20
MAX_PORTS = 100
MAX_HOST_ALIASES = 100
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600

_Model = StrictModel


#: Resource names are qualified names like label keys; the standard ones have no prefix.
ResourceName = Annotated[str, AfterValidator(check_label_key)]


def _quantity_text(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value  # let pydantic report the type error
    quantity.parse_quantity(value)
    return value.strip() if isinstance(value, str) else str(value)


QuantityText = Annotated[str, BeforeValidator(_quantity_text)]


def _is_extended(resource: str) -> bool:
    # Extended resources (nvidia.com/gpu, example.com/foo) cannot be overcommitted and must be
    # whole numbers; kubernetes.io/ names and hugepages are native.
    return "/" in resource and not resource.partition("/")[0].endswith("kubernetes.io")


_HUGEPAGES = "hugepages-"
_CONTAINER_RESOURCES = (quantity.CPU, quantity.MEMORY, quantity.EPHEMERAL_STORAGE)


def _page_size(resource: str) -> int | None:
    """The page size of ``hugepages-<size>`` in bytes, or ``None`` if it is not one."""
    try:
        size = quantity.parse_quantity(resource.removeprefix(_HUGEPAGES))
    except ValueError:
        return None
    return int(size) if size > 0 and size.denominator == 1 else None


def _resource_name_problem(name: str) -> str | None:
    """Why the API server would refuse ``name`` as a container resource, if it would."""
    if "/" not in name:
        if name in _CONTAINER_RESOURCES:
            return None
        if name.startswith(_HUGEPAGES):
            return None if _page_size(name) else f"{name!r} does not name a page size"
        return (
            "must be cpu, memory, ephemeral-storage, hugepages-<size> or an extended "
            "resource with a domain, e.g. nvidia.com/gpu"
        )
    if not _is_extended(name):
        return None
    if name.startswith("requests."):
        return "extended resource names must not start with 'requests.'"
    try:
        # The API server checks the name as it would appear in a quota.
        check_label_key("requests." + name)
    except ValueError as exc:
        return str(exc)
    return None


def _not_overcommitted(resource: str) -> bool:
    return _is_extended(resource) or resource.startswith(_HUGEPAGES)


class ResourceRequirements(_Model):
    """``container_resources``: ``requests`` and ``limits`` as Kubernetes quantities.

    The API server's rules: standard or domain-qualified names; extended resources and
    hugepages are not overcommitted (a limit, equal to any request), extended resources
    are whole, hugepages a multiple of their page size and only next to cpu or memory.
    """

    requests: dict[ResourceName, QuantityText] = Field(default_factory=dict)
    limits: dict[ResourceName, QuantityText] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        amounts: dict[str, dict[str, int]] = {"requests": {}, "limits": {}}
        for section, parsed in amounts.items():
            for name, text in getattr(self, section).items():
                field = f"{section}[{name}]"
                if name == quantity.PODS:
                    problems.append(Problem(field, "'pods' is not a container resource"))
                    continue
                why = _resource_name_problem(name)
                if why is not None:
                    problems.append(Problem(field, why))
                    continue
                try:
                    parsed[name] = quantity.to_amount(name, text)
                except ValueError as exc:
                    problems.append(Problem(field, str(exc)))
                    continue
                if _is_extended(name) and quantity.parse_quantity(text).denominator != 1:
                    problems.append(Problem(field, f"{name} must be a whole number"))
                page = _page_size(name) if name.startswith(_HUGEPAGES) else None
                if page and parsed[name] % page:
                    problems.append(
                        Problem(field, f"must be a multiple of the page size of {name}")
                    )
        requests, limits = amounts["requests"], amounts["limits"]
        for name, request in requests.items():
            if name not in self.limits:
                if _not_overcommitted(name):
                    problems.append(
                        Problem(
                            f"limits[{name}]",
                            f"{name} cannot be overcommitted: set limits[{name}] "
                            "(requests default to limits)",
                        )
                    )
            elif name in limits and request > limits[name]:
                problems.append(
                    Problem(
                        f"requests[{name}]",
                        f"must not exceed limits[{name}] ({self.limits[name]})",
                    )
                )
            elif name in limits and _not_overcommitted(name) and request != limits[name]:
                problems.append(
                    Problem(f"requests[{name}]", f"{name} requests must equal its limits")
                )
        names = {*self.requests, *self.limits}
        if any(n.startswith(_HUGEPAGES) for n in names) and not names & {
            quantity.CPU,
            quantity.MEMORY,
        }:
            problems.append(Problem("", "hugepages need a cpu or memory request or limit too"))
        if problems:
            raise SpecError(problems)
        return self

    @cached_property
    def effective_requests(self) -> Mapping[str, int]:
        """What the scheduler reserves: requests, defaulting to limits like the API server."""
        merged = {name: quantity.to_amount(name, text) for name, text in self.limits.items()}
        merged.update(
            (name, quantity.to_amount(name, text)) for name, text in self.requests.items()
        )
        return merged


def _env_vars_as_list(value: Any) -> Any:
    # KPO takes a dict {name: value} or a list of V1EnvVar-shaped objects.
    if isinstance(value, Mapping):
        return [{"name": name, "value": text} for name, text in value.items()]
    return value


def _image_pull_secrets_as_names(value: Any) -> Any:
    # KPO takes "a,b", a list of names, or a list of {"name": ...} references.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [
            item["name"] if isinstance(item, Mapping) and "name" in item else item for item in value
        ]
    return value


class OnFinishAction(StrEnum):
    """What to do with the pod once the task ends (KubernetesPodOperator's values).

    KPO's ``delete_active_pod`` (delete the pod only while it is still pending or
    running, keep finished ones) is accepted as ``keep_pod``: the dispatcher always
    deletes a pod still alive once its job has ended (cancelled, timed out), so keeping
    finished pods is all that is left to say.
    """

    DELETE_POD = "delete_pod"
    DELETE_SUCCEEDED_POD = "delete_succeeded_pod"
    KEEP_POD = "keep_pod"


#: KubernetesPodOperator's on_finish_action values that name a dispatcher one.
_ON_FINISH_ALIASES = {"delete_active_pod": OnFinishAction.KEEP_POD.value}


def _on_finish_alias(value: Any) -> Any:
    return _ON_FINISH_ALIASES.get(value, value) if isinstance(value, str) else value


class ClusterHints(_Model):
    """KubernetesPodOperator's cluster-choosing parameters, as the DAG set them.

    Routing reads them as hints, never as refusals: ``in_cluster=True`` stands for the
    dispatcher's in-plane cluster (or nothing, per ``routing.in_cluster``), and a
    ``cluster_context``, ``config_file`` or ``kubernetes_conn_id`` stands for the clusters
    ``routing.airflow_connections`` maps it to; a value the table does not know
    restricts nothing, and the decision says so. Only the names are carried: no
    connection, kubeconfig or credential is read.
    """

    in_cluster: bool | None = None
    kubernetes_conn_id: str | None = Field(default=None, min_length=1, max_length=250)
    cluster_context: str | None = Field(default=None, min_length=1, max_length=253)
    config_file: str | None = Field(default=None, min_length=1, max_length=4096)

    @property
    def given(self) -> bool:
        return any(value is not None for _, value in self)


class Requirements(_Model):
    """Where a task may run, beyond what the pod itself says."""

    gpus: int | None = Field(default=None, ge=0, le=1024)
    #: Matched case-insensitively against the node's GPU model, whole or as a run of its
    #: dash-separated words: "a100" and "A100-SXM4-80GB" both match "NVIDIA-A100-SXM4-80GB".
    gpu_model: str | None = Field(default=None, min_length=1, max_length=128)
    #: Shorthand for ``cluster_selector[topology.kubernetes.io/region]``.
    region: LabelValue | None = None
    cluster_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    allowed_clusters: tuple[DNSLabel, ...] | None = None
    max_cost_per_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    #: Higher runs first when tasks queue; routing itself ignores it.
    priority: int = Field(default=0, ge=-1000, le=1000)
    #: The Airflow DAG owner the task belongs to: its fair-share tenant
    #: (``fair_share.tenants``) when it was submitted without authentication.
    owner: str | None = Field(default=None, min_length=1, max_length=256)
    #: The fair-share tenant a task counts against when it was submitted without
    #: authentication and names no owner; see docs/fair-share.md.
    queue: DNSLabel | None = None
    cluster_hints: ClusterHints = Field(default_factory=ClusterHints)


class InitContainer(KubeModel):
    """A container that runs to completion before the task's own (``init_containers``);
    with ``restartPolicy: Always``, a sidecar that starts first and runs alongside it.

    Its resources count in what the pod reserves, as the scheduler counts them; its
    volume mounts name the task's ``volumes``. Probes and lifecycle hooks are not
    accepted, nor ``restartPolicy`` ``Never``/``OnFailure`` (per-container restart rules,
    which Kubernetes 1.35 accepts behind a feature gate and older clusters refuse).
    """

    name: DNSLabel
    image: str = Field(max_length=1024)
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str | None = None
    env: tuple[EnvVar, ...] = Field(default=(), max_length=MAX_ENV_VARS)
    env_from: tuple[Annotated[JsonObject, canonical(EnvFromSource)], ...] = Field(
        default=(), max_length=MAX_ENV_FROM
    )
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    volume_mounts: tuple[Annotated[JsonObject, canonical(VolumeMount)], ...] = Field(
        default=(), max_length=MAX_VOLUMES
    )
    ports: tuple[Annotated[JsonObject, canonical(ContainerPort)], ...] = Field(
        default=(), max_length=MAX_PORTS
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    security_context: Annotated[JsonObject | None, canonical(SecurityContext)] = None
    restart_policy: Literal["Always"] | None = None
    termination_message_policy: Literal["File", "FallbackToLogsOnError"] | None = None

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        return check_image_reference(value)

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        if self.name == TASK_CONTAINER:
            problems.append(Problem("name", f"{TASK_CONTAINER!r} is the task's own container"))
        problems.extend(_duplicate_env_problems(self.env, "env"))
        problems.extend(_mount_problems(None, self.volume_mounts, "volumeMounts"))
        problems.extend(Problem(f"ports{p.field}", p.message) for p in port_problems(self.ports))
        if problems:
            raise SpecError(problems)
        return self


class TaskSpec(_Model):
    """One task: the pod to run (KubernetesPodOperator fields) and where it may run."""

    image: str = Field(max_length=1024)
    name: str | None = Field(
        default=None, max_length=220, pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$"
    )
    namespace: DNSLabel | None = None
    cmds: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    env_vars: Annotated[tuple[EnvVar, ...], BeforeValidator(_env_vars_as_list)] = Field(
        default=(), max_length=MAX_ENV_VARS
    )
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    annotations: dict[LabelKey, str] = Field(default_factory=dict)
    container_resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: Annotated[
        tuple[DNSSubdomain, ...], BeforeValidator(_image_pull_secrets_as_names)
    ] = ()
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    affinity: Affinity | None = None
    #: Kept as JSON (what the pod gets), each checked by its Kubernetes shape.
    volumes: tuple[Annotated[JsonObject, canonical(Volume)], ...] = Field(
        default=(), max_length=MAX_VOLUMES
    )
    volume_mounts: tuple[Annotated[JsonObject, canonical(VolumeMount)], ...] = Field(
        default=(), max_length=MAX_VOLUMES
    )
    service_account_name: DNSSubdomain | None = None
    priority_class_name: DNSSubdomain | None = None
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_SECONDS)
    startup_timeout_seconds: int = Field(default=120, ge=1, le=MAX_TIMEOUT_SECONDS)
    schedule_timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_SECONDS)
    on_finish_action: Annotated[OnFinishAction, BeforeValidator(_on_finish_alias)] = (
        OnFinishAction.DELETE_POD
    )
    #: FallbackToLogsOnError puts the log tail in the termination message when the task
    #: fails without writing one, so failure messages say something useful.
    termination_message_policy: Literal["File", "FallbackToLogsOnError"] = "FallbackToLogsOnError"
    #: Every key of ConfigMaps and Secrets as variables (after ``env_vars``' own).
    env_from: tuple[Annotated[JsonObject, canonical(EnvFromSource)], ...] = Field(
        default=(), max_length=MAX_ENV_FROM
    )
    #: Run before the task's container, in order; their resources count in routing.
    init_containers: tuple[InitContainer, ...] = Field(default=(), max_length=MAX_INIT_CONTAINERS)
    ports: tuple[Annotated[JsonObject, canonical(ContainerPort)], ...] = Field(
        default=(), max_length=MAX_PORTS
    )
    #: The pod's ``securityContext`` and the task container's; each cluster's and
    #: tenant's pod security rules decide whether they are permitted.
    security_context: Annotated[JsonObject | None, canonical(PodSecurityContext)] = None
    container_security_context: Annotated[JsonObject | None, canonical(SecurityContext)] = None
    #: The pod's ``terminationGracePeriodSeconds``: how long the task has between
    #: SIGTERM and SIGKILL when its pod is deleted without a grace period of its own
    #: (evicted, drained). A cancelled job's pod gets it too, bounded by
    #: ``service.max_cancel_grace_seconds`` (without it: ``service.cancel_grace_seconds``).
    termination_grace_period: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT_SECONDS)
    automount_service_account_token: bool | None = None
    host_aliases: tuple[Annotated[JsonObject, canonical(HostAlias)], ...] = Field(
        default=(), max_length=MAX_HOST_ALIASES
    )
    dnspolicy: Literal["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"] | None = None
    dns_config: Annotated[JsonObject | None, canonical(PodDNSConfig)] = None
    hostname: DNSLabel | None = None
    subdomain: DNSLabel | None = None
    #: A RuntimeClass (gVisor, Kata...) that must exist in the cluster the task lands in.
    runtime_class_name: DNSSubdomain | None = None
    requirements: Requirements = Field(default_factory=Requirements)
    #: KubernetesPodOperator's XCom contract (``do_xcom_push``): the task writes its value
    #: to ``/airflow/xcom/return.json``, which a small sidecar hands over through its log
    #: (``dispatcher.core.xcom``); read with ``GET /v1/jobs/{id}/xcom``.
    xcom_sidecar: bool = False
    #: Built by the Airflow layer from dag_id, task_id, run_id, map_index and try_number.
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=512)

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        return check_image_reference(value)

    @field_validator("labels", "annotations")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(key for key in value if key.startswith(RESERVED_PREFIX))
        if reserved:
            raise ValueError(
                f"keys under {RESERVED_PREFIX} are set by the dispatcher: {', '.join(reserved)}"
            )
        return value

    @field_validator("annotations")
    @classmethod
    def _annotations_size(cls, value: dict[str, str]) -> dict[str, str]:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
        if size > MAX_ANNOTATIONS_BYTES:
            raise ValueError(
                f"annotations total {size} bytes, at most {MAX_ANNOTATIONS_BYTES} allowed"
            )
        return value

    @field_validator("annotations")
    @classmethod
    def _kubernetes_annotations(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[Problem] = []
        for key, text in value.items():
            why = _annotation_problem(key, text)
            if why is not None:
                problems.append(Problem(f"[{key}]", why))
        if problems:
            raise SpecError(problems)
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: Any) -> Any:
        # pydantic skips cross-field rules once a field is invalid; the volume references
        # are checked on the raw input then, so one answer still lists every fault.
        try:
            return handler(data)
        except ValidationError as exc:
            problems = list(Problem.from_validation_error(exc))
            if isinstance(data, Mapping):
                problems += _volume_problems(data.get("volumes"), data.get("volume_mounts"))
                problems += _init_mount_problems(data.get("volumes"), data.get("init_containers"))
            raise SpecError(list(dict.fromkeys(problems))) from None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        problems: list[Problem] = []
        if len(self.cmds) + len(self.arguments) > MAX_ARGS:
            problems.append(Problem("arguments", f"cmds and arguments exceed {MAX_ARGS} items"))
        problems.extend(_duplicate_env_problems(self.env_vars, "env_vars"))
        problems.extend(_volume_problems(self.volumes, self.volume_mounts))
        problems.extend(_init_mount_problems(self.volumes, self.init_containers))
        problems.extend(Problem(f"ports{p.field}", p.message) for p in port_problems(self.ports))
        problems.extend(self._init_container_problems())
        problems.extend(self._xcom_problems())
        problems.extend(self._dns_problems())
        if self.service_account_name is None:
            problems.extend(_token_problems(self.volumes))
        problems.extend(self._gpu_problems())
        if not problems:
            size = len(self.model_dump_json(exclude_defaults=True))
            if size > MAX_SPEC_BYTES:
                problems.append(
                    Problem("", f"the spec is {size} bytes, at most {MAX_SPEC_BYTES} allowed")
                )
        if problems:
            raise SpecError(problems)
        return self

    def _init_container_problems(self) -> list[Problem]:
        names = [container.name for container in self.init_containers]
        return [
            Problem(f"init_containers[{index}].name", f"duplicate {name!r}")
            for index, name in enumerate(names)
            if names.index(name) != index
        ]

    def _xcom_problems(self) -> list[Problem]:
        """What would collide with the XCom sidecar's container, volume or mount."""
        if not self.xcom_sidecar:
            return []
        why = "taken by the XCom sidecar (xcom_sidecar, do_xcom_push)"
        problems = [
            Problem(f"init_containers[{index}].name", f"{XCOM_SIDECAR_NAME!r} is {why}")
            for index, container in enumerate(self.init_containers)
            if container.name == XCOM_SIDECAR_NAME
        ]
        problems += [
            Problem(f"volumes[{index}].name", f"{XCOM_VOLUME!r} is {why}")
            for index, volume in enumerate(self.volumes)
            if volume.get("name") == XCOM_VOLUME
        ]
        problems += [
            Problem(f"volume_mounts[{index}].mountPath", f"{XCOM_DIRECTORY} is {why}")
            for index, mount in enumerate(self.volume_mounts)
            if str(mount.get("mountPath", "")).rstrip("/") == XCOM_DIRECTORY
        ]
        return problems

    def _dns_problems(self) -> list[Problem]:
        if self.dnspolicy != "None":
            return []
        if not (self.dns_config or {}).get("nameservers"):
            return [
                Problem(
                    "dns_config.nameservers",
                    "needs at least one nameserver: with dnspolicy None the pod resolves "
                    "names only through dns_config",
                )
            ]
        return []

    def _gpu_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        asked = self.requirements.gpus
        pod_gpus = self.container_resources.effective_requests.get(quantity.GPU)
        if asked is not None and pod_gpus is not None and asked != pod_gpus:
            problems.append(
                Problem(
                    "requirements.gpus",
                    f"{asked} contradicts container_resources {quantity.GPU} = {pod_gpus}; "
                    "set one of them",
                )
            )
        if self.requirements.gpu_model and not self.gpus:
            problems.append(
                Problem(
                    "requirements.gpu_model",
                    f"needs a GPU count: set requirements.gpus or "
                    f"container_resources.limits[{quantity.GPU}]",
                )
            )
        return problems

    @property
    def gpus(self) -> int:
        """GPUs the task needs, asked either way (requirements or KPO resources)."""
        pod_gpus = self.container_resources.effective_requests.get(quantity.GPU)
        if pod_gpus is not None:
            return pod_gpus
        return self.requirements.gpus or 0

    @cached_property
    def requests(self) -> Mapping[str, int]:
        """What the pod will reserve on a node, in canonical units, including the GPU
        count from ``requirements.gpus`` and the one pod slot it takes.

        Init containers count as the scheduler counts them (``snapshot.pod_requests``):
        the pod reserves the larger of its containers' sum and its peak while one init
        container runs; sidecars (``restartPolicy: Always``) run alongside everything
        after them.
        """
        own = dict(self.container_resources.effective_requests)
        if self.gpus:
            own[quantity.GPU] = self.gpus
        init = [
            (c.resources.effective_requests, c.restart_policy == "Always")
            for c in self.init_containers
        ]
        if self.xcom_sidecar:
            # The XCom sidecar is the last init container, a sidecar (``podspec``).
            init.append((XCOM_SIDECAR_RESOURCES.effective_requests, True))
        merged = quantity.pod_requests_with_init(own, init)
        merged[quantity.PODS] = 1
        return {name: amount for name, amount in merged.items() if amount}


def _duplicate_env_problems(env: tuple[EnvVar, ...], where: str) -> list[Problem]:
    names = [variable.name for variable in env]
    return [
        Problem(f"{where}[{index}].name", f"duplicate {name!r}")
        for index, name in enumerate(names)
        if names.index(name) != index
    ]


def _declared_volumes(volumes: Any) -> tuple[set[str], list[Problem]]:
    problems: list[Problem] = []
    declared: set[str] = set()
    for index, volume in enumerate(volumes if isinstance(volumes, list | tuple) else ()):
        name = volume.get("name") if isinstance(volume, Mapping) else None
        if isinstance(name, str) and name in declared:
            problems.append(Problem(f"volumes[{index}].name", f"duplicate {name!r}"))
        elif isinstance(name, str):
            declared.add(name)
    return declared, problems


def _mount_problems(declared: set[str] | None, mounts: Any, where: str) -> list[Problem]:
    """Mounts of one container: of declared volumes (unless ``declared`` is ``None``),
    at distinct paths. Reads raw input too (items that are not objects are skipped)."""
    problems: list[Problem] = []
    paths: set[str] = set()
    for index, mount in enumerate(mounts if isinstance(mounts, list | tuple) else ()):
        if not isinstance(mount, Mapping):
            continue
        name = mount.get("name")
        if declared is not None and isinstance(name, str) and name not in declared:
            problems.append(Problem(f"{where}[{index}].name", f"no volume named {name!r}"))
        path = mount.get("mountPath", mount.get("mount_path"))
        if isinstance(path, str) and path in paths:
            problems.append(Problem(f"{where}[{index}].mountPath", f"{path!r} is mounted twice"))
        elif isinstance(path, str):
            paths.add(path)
    return problems


def _volume_problems(volumes: Any, mounts: Any) -> list[Problem]:
    """Names across volumes and mounts: unique volumes, mounts of declared volumes, at
    distinct paths. Reads raw input too (items that are not objects are skipped)."""
    declared, problems = _declared_volumes(volumes)
    return problems + _mount_problems(declared, mounts, "volume_mounts")


def _init_mount_problems(volumes: Any, containers: Any) -> list[Problem]:
    """Init containers' mounts name declared volumes (their paths are checked by
    ``InitContainer`` itself). Reads raw input too."""
    declared, _ = _declared_volumes(volumes)
    problems: list[Problem] = []
    for index, container in enumerate(containers if isinstance(containers, list | tuple) else ()):
        if isinstance(container, InitContainer):
            mounts: Any = container.volume_mounts
        elif isinstance(container, Mapping):
            mounts = container.get("volumeMounts", container.get("volume_mounts"))
        else:
            continue
        for number, mount in enumerate(mounts if isinstance(mounts, list | tuple) else ()):
            name = mount.get("name") if isinstance(mount, Mapping) else None
            if isinstance(name, str) and name not in declared:
                problems.append(
                    Problem(
                        f"init_containers[{index}].volumeMounts[{number}].name",
                        f"no volume named {name!r}",
                    )
                )
    return problems


def _token_problems(volumes: tuple[JsonObject, ...]) -> list[Problem]:
    # The API server refuses a projected token of no service account, and a cluster's
    # default account may not exist or be meant for it: the task names its account.
    return [
        Problem(
            f"volumes[{index}].projected.sources[{number}].serviceAccountToken",
            "needs service_account_name: the token is that service account's",
        )
        for index, volume in enumerate(volumes)
        for number, source in enumerate((volume.get("projected") or {}).get("sources") or ())
        if "serviceAccountToken" in source
    ]


#: Annotations the API server reads (and validates) on a pod; a task may not set them.
_RESERVED_ANNOTATIONS = (
    "kubernetes.io/config.mirror",
    "scheduler.alpha.kubernetes.io/tolerations",
    "seccomp.security.alpha.kubernetes.io/pod",
)
_RESERVED_ANNOTATION_PREFIXES = (
    "container.seccomp.security.alpha.kubernetes.io/",
    "container.apparmor.security.beta.kubernetes.io/",
)
_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def _annotation_problem(key: str, value: str) -> str | None:
    if key in _RESERVED_ANNOTATIONS or key.startswith(_RESERVED_ANNOTATION_PREFIXES):
        return (
            "set by Kubernetes or the cluster's security settings, not by a task "
            "(the API server validates it against the pod)"
        )
    if key == _DELETION_COST and not _is_int32(value):
        return "must be a 32-bit integer"
    return None


def _is_int32(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?[0-9]{1,10}", text)) and -(2**31) <= int(text) < 2**31


#: What the XCom sidecar reserves (KubernetesPodOperator's sidecar asks the same).
XCOM_SIDECAR_RESOURCES = ResourceRequirements.model_validate(
    {"requests": {"cpu": "1m", "memory": "10Mi"}}
)


class PodDefaults(_Model):
    """What a cluster adds to every pod routed to it (from the cluster's settings)."""

    namespace: DNSLabel = "default"
    #: A task's own ``namespace`` is honoured only when listed here; otherwise the
    #: cluster's ``namespace`` wins.
    allowed_namespaces: tuple[DNSLabel, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    #: Added only to pods that need GPUs, e.g. for ``nvidia.com/gpu=present:NoSchedule``.
    gpu_tolerations: tuple[Toleration, ...] = ()
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    priority_class_name: DNSSubdomain | None = None
    image_pull_secrets: tuple[DNSSubdomain, ...] = ()
    service_account_name: DNSSubdomain | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[LabelKey, str] = Field(default_factory=dict)
    #: The XCom sidecar's image (``sh``, ``sleep``, ``base64`` and ``wc`` are all it
    #: needs): a cluster that pulls from a mirror names its copy here.
    xcom_sidecar_image: Annotated[str, AfterValidator(check_image_reference)] = "alpine:3.20"


def parse_task_spec(data: Any, *, source: str | None = None) -> TaskSpec:
    """Validate a task spec document; raises ``SpecError`` listing every problem."""
    if not isinstance(data, Mapping):
        raise SpecError.single("", "a task spec must be a mapping of fields", source=source)
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(Problem.from_validation_error(exc), source=source) from None
