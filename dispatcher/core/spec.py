"""What a task asks for: ``TaskSpec`` and its routing ``Requirements``; pure, no I/O.

Field names follow Airflow's KubernetesPodOperator (``image``, ``cmds``, ``arguments``,
``env_vars``, ``container_resources``, ``on_finish_action``...) so a DAG author moves over
by changing an import. Nested Kubernetes objects (tolerations, affinity, volumes) are
accepted in the API's own camelCase JSON shape, and snake_case is accepted too.

Validation is strict and complete: everything the API server or the scheduler would refuse
later is refused here, every problem at once, each at its field path
(``container_resources.limits[nvidia.com/gpu]``). Sizes are bounded so that a spec always
fits in a pod's annotations (see ``podspec``).

What routing does not evaluate: inter-pod (anti-)affinity needs the other pods, which the
snapshot does not hold; it is passed to the pod as given and enforced by the scheduler.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from dispatcher.core import quantity
from dispatcher.core.names import (
    DNSLabel,
    DNSSubdomain,
    LabelKey,
    LabelValue,
    check_label_key,
)
from dispatcher.errors import Problem, SpecError

__all__ = [
    "RESERVED_PREFIX",
    "Affinity",
    "EnvVar",
    "NodeAffinity",
    "NodeSelector",
    "NodeSelectorRequirement",
    "NodeSelectorTerm",
    "OnFinishAction",
    "PodDefaults",
    "Requirements",
    "ResourceRequirements",
    "TaskSpec",
    "Toleration",
    "parse_task_spec",
]

#: Label and annotation keys under this prefix belong to the dispatcher (job identity,
#: stored spec); a task may not set them.
RESERVED_PREFIX = "kube-dispatcher.dev/"

MAX_ENV_VARS = 500
MAX_ARGS = 1000
MAX_LABELS = 64
MAX_ANNOTATIONS_BYTES = 64 * 1024
#: The whole spec is stored on the pod as an annotation; Kubernetes allows 256 KiB of
#: annotations in total, so the spec plus the user's annotations stay well below that.
MAX_SPEC_BYTES = 128 * 1024
MAX_VOLUMES = 100
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600

JsonObject = dict[str, Any]


class _Model(BaseModel):
    """Frozen, closed models: unknown fields are refused, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with ``update``, validated like new input.

        pydantic's own copy skips validation and would keep values derived from the old
        fields (``TaskSpec.requests``), so a changed copy is built afresh instead.
        """
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate({**self.model_dump(), **update})


class _K8sModel(_Model):
    """A Kubernetes object: camelCase as the API writes it, snake_case accepted too."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def to_k8s(self) -> JsonObject:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


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


class ResourceRequirements(_Model):
    """``container_resources``: ``requests`` and ``limits`` as Kubernetes quantities."""

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
                try:
                    parsed[name] = quantity.to_amount(name, text)
                except ValueError as exc:
                    problems.append(Problem(field, str(exc)))
                    continue
                if _is_extended(name) and quantity.parse_quantity(text).denominator != 1:
                    problems.append(Problem(field, f"{name} must be a whole number"))
        requests, limits = amounts["requests"], amounts["limits"]
        for name, request in requests.items():
            if name not in self.limits:
                if _is_extended(name):
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
            elif name in limits and _is_extended(name) and request != limits[name]:
                problems.append(
                    Problem(f"requests[{name}]", f"{name} requests must equal its limits")
                )
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


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(_K8sModel):
    """A pod toleration; an empty ``key`` with ``Exists`` tolerates every taint."""

    key: str = ""
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: str = ""
    effect: TaintEffect | Literal[""] = ""
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        if self.key:
            try:
                check_label_key(self.key)
            except ValueError as exc:
                problems.append(Problem("key", str(exc)))
        elif self.operator is not TolerationOperator.EXISTS:
            problems.append(Problem("operator", "must be 'Exists' when key is empty"))
        if self.operator is TolerationOperator.EXISTS and self.value:
            problems.append(Problem("value", "must be empty when operator is 'Exists'"))
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            problems.append(Problem("tolerationSeconds", "only allowed with effect 'NoExecute'"))
        if problems:
            raise SpecError(problems)
        return self

    def to_k8s(self) -> JsonObject:
        out: JsonObject = {"operator": self.operator.value}
        if self.key:
            out["key"] = self.key
        if self.value:
            out["value"] = self.value
        if self.effect:
            out["effect"] = str(self.effect)
        if self.toleration_seconds is not None:
            out["tolerationSeconds"] = self.toleration_seconds
        return out


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"


class NodeSelectorRequirement(_K8sModel):
    """One ``matchExpressions``/``matchFields`` entry of a node selector term."""

    key: str
    operator: SelectorOperator
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        op = self.operator
        if op in (SelectorOperator.IN, SelectorOperator.NOT_IN) and not self.values:
            raise ValueError(f"operator {op.value} needs at least one value")
        if op in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST) and self.values:
            raise ValueError(f"operator {op.value} takes no values")
        if op in (SelectorOperator.GT, SelectorOperator.LT) and (
            len(self.values) != 1 or not re.fullmatch(r"-?[0-9]+", self.values[0])
        ):
            raise ValueError(f"operator {op.value} needs exactly one integer value")
        return self


class NodeSelectorTerm(_K8sModel):
    """Requirements ANDed together; terms of a selector are ORed."""

    match_expressions: tuple[NodeSelectorRequirement, ...] = ()
    match_fields: tuple[NodeSelectorRequirement, ...] = ()

    @field_validator("match_expressions")
    @classmethod
    def _label_keys(
        cls, value: tuple[NodeSelectorRequirement, ...]
    ) -> tuple[NodeSelectorRequirement, ...]:
        for requirement in value:
            check_label_key(requirement.key)
        return value

    @field_validator("match_fields")
    @classmethod
    def _node_name_only(
        cls, value: tuple[NodeSelectorRequirement, ...]
    ) -> tuple[NodeSelectorRequirement, ...]:
        for requirement in value:
            if requirement.key != "metadata.name":
                raise ValueError("matchFields supports only the key 'metadata.name'")
            if requirement.operator not in (SelectorOperator.IN, SelectorOperator.NOT_IN):
                raise ValueError("matchFields supports only the operators In and NotIn")
            if len(requirement.values) != 1:
                raise ValueError("matchFields needs exactly one value")
        return value

    def to_k8s(self) -> JsonObject:
        out: JsonObject = {}
        if self.match_expressions:
            out["matchExpressions"] = [r.to_k8s() for r in self.match_expressions]
        if self.match_fields:
            out["matchFields"] = [r.to_k8s() for r in self.match_fields]
        return out


class NodeSelector(_K8sModel):
    node_selector_terms: tuple[NodeSelectorTerm, ...]

    @field_validator("node_selector_terms")
    @classmethod
    def _not_empty(cls, value: tuple[NodeSelectorTerm, ...]) -> tuple[NodeSelectorTerm, ...]:
        # A validator rather than min_length: pydantic would also report the length when an
        # item is invalid, doubling the error.
        if not value:
            raise ValueError("needs at least one term")
        return value


class NodeAffinity(_K8sModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: tuple[JsonObject, ...] = ()


class Affinity(_K8sModel):
    """Pod affinity; only ``nodeAffinity``'s required terms take part in routing."""

    node_affinity: NodeAffinity | None = None
    pod_affinity: JsonObject | None = None
    pod_anti_affinity: JsonObject | None = None

    @property
    def required_terms(self) -> tuple[NodeSelectorTerm, ...] | None:
        """The required node selector terms, or ``None`` when there are none."""
        if self.node_affinity is None:
            return None
        required = self.node_affinity.required_during_scheduling_ignored_during_execution
        return None if required is None else required.node_selector_terms

    def to_k8s(self) -> JsonObject:
        out: JsonObject = {}
        if self.node_affinity is not None:
            node: JsonObject = {}
            required = self.node_affinity.required_during_scheduling_ignored_during_execution
            if required is not None:
                node["requiredDuringSchedulingIgnoredDuringExecution"] = {
                    "nodeSelectorTerms": [t.to_k8s() for t in required.node_selector_terms]
                }
            preferred = self.node_affinity.preferred_during_scheduling_ignored_during_execution
            if preferred:
                node["preferredDuringSchedulingIgnoredDuringExecution"] = list(preferred)
            out["nodeAffinity"] = node
        if self.pod_affinity is not None:
            out["podAffinity"] = self.pod_affinity
        if self.pod_anti_affinity is not None:
            out["podAntiAffinity"] = self.pod_anti_affinity
        return out


_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_VALUE_FROM_KEYS = frozenset({"secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef"})


class EnvVar(_K8sModel):
    """An environment variable: a ``value``, or ``valueFrom`` a secret/config map/field."""

    name: str = Field(min_length=1, max_length=256)
    value: str | None = None
    value_from: JsonObject | None = None

    @field_validator("name")
    @classmethod
    def _c_identifier(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid variable name: letters, digits, '_', '-', '.'; "
                "not starting with a digit"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set either value or valueFrom, not both")
        if self.value_from is not None and (
            len(self.value_from) != 1 or not set(self.value_from) <= _VALUE_FROM_KEYS
        ):
            allowed = ", ".join(sorted(_VALUE_FROM_KEYS))
            raise ValueError(f"valueFrom needs exactly one of: {allowed}")
        return self


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
    """What to do with the pod once the task ends (KubernetesPodOperator's values)."""

    DELETE_POD = "delete_pod"
    DELETE_SUCCEEDED_POD = "delete_succeeded_pod"
    KEEP_POD = "keep_pod"


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
    volumes: tuple[JsonObject, ...] = Field(default=(), max_length=MAX_VOLUMES)
    volume_mounts: tuple[JsonObject, ...] = Field(default=(), max_length=MAX_VOLUMES)
    service_account_name: DNSSubdomain | None = None
    priority_class_name: DNSSubdomain | None = None
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_SECONDS)
    startup_timeout_seconds: int = Field(default=120, ge=1, le=MAX_TIMEOUT_SECONDS)
    schedule_timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_SECONDS)
    on_finish_action: OnFinishAction = OnFinishAction.DELETE_POD
    #: FallbackToLogsOnError puts the log tail in the termination message when the task
    #: fails without writing one, so failure messages say something useful.
    termination_message_policy: Literal["File", "FallbackToLogsOnError"] = "FallbackToLogsOnError"
    requirements: Requirements = Field(default_factory=Requirements)
    #: Built by the Airflow layer from dag_id, task_id, run_id, map_index and try_number.
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=512)

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if not value or any(char.isspace() for char in value):
            raise ValueError("needs an image reference without spaces, e.g. 'python:3.12'")
        return value

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

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        problems: list[Problem] = []
        if len(self.cmds) + len(self.arguments) > MAX_ARGS:
            problems.append(Problem("arguments", f"cmds and arguments exceed {MAX_ARGS} items"))
        names = [env.name for env in self.env_vars]
        for index, env in enumerate(self.env_vars):
            if names.index(env.name) != index:
                problems.append(Problem(f"env_vars[{index}].name", f"duplicate {env.name!r}"))
        problems.extend(self._volume_problems())
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

    def _volume_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        declared: set[str] = set()
        for index, volume in enumerate(self.volumes):
            name = volume.get("name")
            if (
                not isinstance(name, str)
                or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
                or len(name) > 63
            ):
                problems.append(Problem(f"volumes[{index}].name", "needs an RFC 1123 name"))
            elif name in declared:
                problems.append(Problem(f"volumes[{index}].name", f"duplicate {name!r}"))
            else:
                declared.add(name)
            if len(volume) < 2:
                problems.append(Problem(f"volumes[{index}]", "needs a volume source"))
        for index, mount in enumerate(self.volume_mounts):
            name = mount.get("name")
            path = mount.get("mountPath", mount.get("mount_path"))
            if name not in declared:
                problems.append(
                    Problem(f"volume_mounts[{index}].name", f"no volume named {name!r}")
                )
            if not isinstance(path, str) or not path.startswith("/"):
                problems.append(
                    Problem(f"volume_mounts[{index}].mountPath", "needs an absolute path")
                )
        return problems

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
        count from ``requirements.gpus`` and the one pod slot it takes."""
        merged = dict(self.container_resources.effective_requests)
        if self.gpus:
            merged[quantity.GPU] = self.gpus
        merged[quantity.PODS] = 1
        return {name: amount for name, amount in merged.items() if amount}

    def to_annotation(self) -> str:
        """Compact JSON of the spec, enough to rebuild it (``TaskSpec.from_annotation``)."""
        return self.model_dump_json(exclude_defaults=True)

    @classmethod
    def from_annotation(cls, text: str) -> TaskSpec:
        return parse_task_spec(json.loads(text))


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


def parse_task_spec(data: Any, *, source: str | None = None) -> TaskSpec:
    """Validate a task spec document; raises ``SpecError`` listing every problem."""
    if not isinstance(data, Mapping):
        raise SpecError.single("", "a task spec must be a mapping of fields", source=source)
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(Problem.from_validation_error(exc), source=source) from None
