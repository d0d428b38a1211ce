"""The Kubernetes objects a task spec carries into its pod, as strict shapes; pure, no I/O.

A task passes some Kubernetes objects through to its pod: tolerations, affinity, an
environment variable's ``valueFrom``, volumes and volume mounts. Each is checked here by a
model of just the fields the dispatcher accepts, named and typed as the Kubernetes API
defines them (camelCase as the API writes it; snake_case accepted too), closed to unknown
fields, and held to the rules kube-apiserver applies when it creates a pod
(``k8s.io/kubernetes/pkg/apis/core/validation``, v1.35). So a spec the dispatcher accepts
never makes a pod the API server refuses, and every refusal names its field path::

    affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey:
    field required

Where a rule here is stricter than the API server's, the shape's docstring says so and why
(usually: the API server would accept the pod but the kubelet could never start it).

Two kinds of use:

- typed shapes the core reads: ``Toleration`` and ``Affinity`` with its node selector
  terms (routing evaluates them);
- shapes the core only passes through (``Volume``, ``VolumeMount``, ``EnvVarSource``): the
  task spec keeps them as JSON, validated by the shape and replaced by the shape's
  canonical dump (``canonical``), so what the pod gets is exactly what was checked.

``check_image_reference`` holds a container image to the grammar the kubelet parses
(``InvalidImageName`` otherwise).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.alias_generators import to_camel

from dispatcher.core import quantity
from dispatcher.core.names import (
    DNSLabel,
    DNSSubdomain,
    LabelKey,
    LabelValue,
    check_dns_subdomain,
    check_label_key,
    check_label_value,
)
from dispatcher.errors import Problem, SpecError

__all__ = [
    "TASK_CONTAINER",
    "Affinity",
    "AppArmorProfile",
    "Capabilities",
    "ConfigMapEnvSource",
    "ConfigMapKeySelector",
    "ContainerPort",
    "EnvFromSource",
    "EnvVar",
    "EnvVarSource",
    "HostAlias",
    "JsonObject",
    "KubeModel",
    "LabelSelector",
    "LabelSelectorRequirement",
    "NodeAffinity",
    "NodeSelector",
    "NodeSelectorRequirement",
    "NodeSelectorTerm",
    "PodAffinity",
    "PodAffinityTerm",
    "PodAntiAffinity",
    "PodDNSConfig",
    "PodDNSConfigOption",
    "PodSecurityContext",
    "PreferredSchedulingTerm",
    "SELinuxOptions",
    "SeccompProfile",
    "SecretEnvSource",
    "SecretKeySelector",
    "SecurityContext",
    "SelectorOperator",
    "StrictModel",
    "Sysctl",
    "TaintEffect",
    "Toleration",
    "TolerationOperator",
    "Volume",
    "VolumeMount",
    "WeightedPodAffinityTerm",
    "canonical",
    "check_image_reference",
    "port_problems",
]

JsonObject = dict[str, Any]

#: The one container of a dispatched pod (``podspec.CONTAINER_NAME``; a test keeps them
#: equal). Downward API resource references may name only it.
TASK_CONTAINER = "base"

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


class StrictModel(BaseModel):
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


class KubeModel(StrictModel):
    """A Kubernetes object: camelCase as the API writes it, snake_case accepted too.

    Optional fields default to ``None`` (absent) or empty, never to a value Kubernetes
    would read differently from absent, so the canonical dump leaves them out safely.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _api_names(cls, data: Any) -> Any:
        # snake_case names become the API's names first, so every problem is reported at
        # the API's field path (``podAffinity``, ``topologyKey``) whichever was written.
        if not isinstance(data, Mapping):
            return data
        renamed: JsonObject = {}
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            name = field.alias if field is not None and field.alias else key
            if name in renamed:
                raise SpecError([Problem(name, f"given twice (as {name!r} and {key!r})")])
            renamed[name] = value
        return renamed

    def to_k8s(self) -> JsonObject:
        """The object in the API's JSON shape (camelCase, unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


def canonical(shape: type[KubeModel]) -> BeforeValidator:
    """``Annotated[JsonObject, canonical(Volume)]``: JSON checked by ``Volume`` and
    replaced by its canonical dump (``None`` passes through)."""

    def validate(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, shape):
            return value.to_k8s()
        # A ValidationError raised here keeps its inner locations under this field's.
        return shape.model_validate(value).to_k8s()

    return BeforeValidator(validate)


def _problems(problems: list[Problem]) -> None:
    if problems:
        raise SpecError(problems)


# ------------------------------------------------------------------------------ values


def _check_int64(value: int) -> int:
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise ValueError("must fit in a 64-bit integer")
    return value


Int64 = Annotated[int, AfterValidator(_check_int64)]
#: File permission bits, as Kubernetes takes them (decimal in JSON: 0644 is 420).
FileMode = Annotated[int, Field(ge=0, le=0o777)]
Weight = Annotated[int, Field(ge=1, le=100)]


def _check_local_path(value: str) -> str:
    """A path inside a volume: relative, no ``..`` element, not starting with ``..``."""
    if not value:
        raise ValueError("must not be empty")
    if value.startswith("/"):
        raise ValueError("must be a relative path")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    if value.startswith(".."):
        raise ValueError("must not start with '..'")
    return value


LocalPath = Annotated[str, AfterValidator(_check_local_path)]


def _check_sub_path(value: str) -> str:
    """A mount's ``subPath``: relative, without ``..`` elements."""
    if value.startswith("/"):
        raise ValueError("must be a relative path")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    return value


_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _check_config_key(value: str) -> str:
    """A ConfigMap or Secret key: ``[-._a-zA-Z0-9]+``, at most 253, not ``.``/``..``."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 253:
        raise ValueError("must be at most 253 characters")
    if not _CONFIG_KEY.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid key: use letters, digits, '-', '_' and '.'")
    if value in (".", "..") or value.startswith(".."):
        raise ValueError("must not be '.' or '..' nor start with '..'")
    return value


ConfigKey = Annotated[str, AfterValidator(_check_config_key)]


def _check_quantity(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value  # pydantic reports the type
    if quantity.parse_quantity(value) < 0:
        raise ValueError("must not be negative")
    return value.strip() if isinstance(value, str) else str(value)


NonNegativeQuantity = Annotated[str, BeforeValidator(_check_quantity)]


# -------------------------------------------------------------------------- tolerations


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(KubeModel):
    """A pod toleration; an empty ``key`` with ``Exists`` tolerates every taint.

    ``Lt``/``Gt`` operators (alpha in 1.35, off by default) are refused.
    """

    key: str = ""
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: str = ""
    effect: TaintEffect | Literal[""] = ""
    toleration_seconds: Int64 | None = None

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
        if self.operator is TolerationOperator.EQUAL:
            try:
                check_label_value(self.value)
            except ValueError as exc:
                problems.append(Problem("value", str(exc)))
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            problems.append(Problem("tolerationSeconds", "only allowed with effect 'NoExecute'"))
        _problems(problems)
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


# ---------------------------------------------------------------- node selector terms


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"


_INTEGER = re.compile(r"-?[0-9]+")


class NodeSelectorRequirement(KubeModel):
    """One ``matchExpressions``/``matchFields`` entry of a node selector term.

    Values are held to label-value rules even in preferred terms, where the API server
    lets invalid ones through: such a value can never match a node label.
    """

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
            len(self.values) != 1 or not _INTEGER.fullmatch(self.values[0])
        ):
            raise ValueError(f"operator {op.value} needs exactly one integer value")
        return self


class NodeSelectorTerm(KubeModel):
    """Requirements ANDed together; terms of a selector are ORed."""

    match_expressions: tuple[NodeSelectorRequirement, ...] = ()
    match_fields: tuple[NodeSelectorRequirement, ...] = ()

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        for index, requirement in enumerate(self.match_expressions):
            where = f"matchExpressions[{index}]"
            try:
                check_label_key(requirement.key)
            except ValueError as exc:
                problems.append(Problem(f"{where}.key", str(exc)))
            for number, value in enumerate(requirement.values):
                try:
                    check_label_value(value)
                except ValueError as exc:
                    problems.append(Problem(f"{where}.values[{number}]", str(exc)))
        for index, requirement in enumerate(self.match_fields):
            where = f"matchFields[{index}]"
            if requirement.key != "metadata.name":
                problems.append(
                    Problem(f"{where}.key", "matchFields supports only the key 'metadata.name'")
                )
            if requirement.operator not in (SelectorOperator.IN, SelectorOperator.NOT_IN):
                problems.append(
                    Problem(
                        f"{where}.operator", "matchFields supports only the operators In and NotIn"
                    )
                )
            elif len(requirement.values) != 1:
                problems.append(Problem(f"{where}.values", "matchFields needs exactly one value"))
            else:
                try:
                    check_dns_subdomain(requirement.values[0])
                except ValueError as exc:
                    problems.append(Problem(f"{where}.values[0]", f"not a node name: {exc}"))
        _problems(problems)
        return self


class NodeSelector(KubeModel):
    node_selector_terms: tuple[NodeSelectorTerm, ...]

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        # Not min_length: pydantic would also report the length when an item is invalid.
        if not self.node_selector_terms:
            raise SpecError([Problem("nodeSelectorTerms", "needs at least one term")])
        return self


class PreferredSchedulingTerm(KubeModel):
    weight: Weight
    preference: NodeSelectorTerm


class NodeAffinity(KubeModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: tuple[PreferredSchedulingTerm, ...] = ()


# ---------------------------------------------------------------- inter-pod affinity


class LabelSelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(KubeModel):
    key: LabelKey
    operator: LabelSelectorOperator
    values: tuple[LabelValue, ...] = ()

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        op = self.operator
        if op in (LabelSelectorOperator.IN, LabelSelectorOperator.NOT_IN) and not self.values:
            raise SpecError([Problem("values", f"operator {op.value} needs at least one value")])
        if (
            op in (LabelSelectorOperator.EXISTS, LabelSelectorOperator.DOES_NOT_EXIST)
            and self.values
        ):
            raise SpecError([Problem("values", f"operator {op.value} takes no values")])
        return self


class LabelSelector(KubeModel):
    """A label query; an empty selector matches everything, an absent one nothing."""

    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @property
    def keys(self) -> set[str]:
        return set(self.match_labels) | {r.key for r in self.match_expressions}


class PodAffinityTerm(KubeModel):
    """Pods (by ``labelSelector``, in ``namespaces``) this pod should be near or away from.

    ``matchLabelKeys`` and ``mismatchLabelKeys`` merge the pod's own label values into the
    selector when the pod is created; a key also in the selector, in both lists or twice
    in one would make a duplicate requirement, which the API server refuses (this shape
    refuses it whether or not the pod carries that label).
    """

    label_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    namespaces: tuple[DNSLabel, ...] = ()
    topology_key: LabelKey
    match_label_keys: tuple[LabelKey, ...] = ()
    mismatch_label_keys: tuple[LabelKey, ...] = ()

    @model_validator(mode="after")
    def _label_keys(self) -> Self:
        problems: list[Problem] = []
        selector_keys = self.label_selector.keys if self.label_selector is not None else set()
        for name in ("matchLabelKeys", "mismatchLabelKeys"):
            keys = self.match_label_keys if name == "matchLabelKeys" else self.mismatch_label_keys
            if keys and self.label_selector is None:
                problems.append(Problem(name, "must not be set when labelSelector is not set"))
                continue
            for index, key in enumerate(keys):
                if keys.index(key) != index:
                    problems.append(Problem(f"{name}[{index}]", f"duplicate {key!r}"))
                elif name == "matchLabelKeys" and key in selector_keys:
                    problems.append(
                        Problem(f"{name}[{index}]", f"{key!r} is also in labelSelector")
                    )
                elif name == "matchLabelKeys" and key in self.mismatch_label_keys:
                    problems.append(
                        Problem(f"{name}[{index}]", f"{key!r} is also in mismatchLabelKeys")
                    )
        _problems(problems)
        return self


class WeightedPodAffinityTerm(KubeModel):
    weight: Weight
    pod_affinity_term: PodAffinityTerm


class PodAffinity(KubeModel):
    required_during_scheduling_ignored_during_execution: tuple[PodAffinityTerm, ...] = ()
    preferred_during_scheduling_ignored_during_execution: tuple[WeightedPodAffinityTerm, ...] = ()


class PodAntiAffinity(KubeModel):
    required_during_scheduling_ignored_during_execution: tuple[PodAffinityTerm, ...] = ()
    preferred_during_scheduling_ignored_during_execution: tuple[WeightedPodAffinityTerm, ...] = ()


class Affinity(KubeModel):
    """Pod affinity; only ``nodeAffinity``'s required terms take part in routing.

    Inter-pod (anti-)affinity needs the other pods, which the snapshot does not hold: it
    is checked for shape here and enforced by each cluster's scheduler.
    """

    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAntiAffinity | None = None

    @property
    def required_terms(self) -> tuple[NodeSelectorTerm, ...] | None:
        """The required node selector terms, or ``None`` when there are none."""
        if self.node_affinity is None:
            return None
        required = self.node_affinity.required_during_scheduling_ignored_during_execution
        return None if required is None else required.node_selector_terms


# ------------------------------------------------------------------ environment variables

#: What ``fieldRef`` may read into an environment variable / a downward API file
#: (subscripted ``metadata.labels['k']`` and ``metadata.annotations['k']`` work in both).
_ENV_FIELD_PATHS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
    }
)
_VOLUME_FIELD_PATHS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "metadata.labels",
        "metadata.annotations",
        "metadata.uid",
    }
)
_RESOURCE_FIELDS = frozenset(
    f"{section}.{name}"
    for section in ("limits", "requests")
    for name in ("cpu", "memory", "ephemeral-storage")
)
_CPU_DIVISORS = frozenset({"1m", "1"})
_BYTE_DIVISORS = frozenset(
    {"1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei"}
)
_SUBSCRIPT = re.compile(r"(?P<path>[^\[]+)\['(?P<key>.*)'\]")


class ObjectFieldSelector(KubeModel):
    """A field of the pod (``fieldPath``), for the API version ``v1`` (the only one)."""

    api_version: Literal["v1"] | None = None
    field_path: str

    def problems(self, allowed: frozenset[str]) -> list[Problem]:
        """What is wrong with ``fieldPath`` where only ``allowed`` paths may be read."""
        match = _SUBSCRIPT.fullmatch(self.field_path)
        if match is None:
            if self.field_path in allowed:
                return []
            return [Problem("fieldPath", f"must be one of: {', '.join(sorted(allowed))}")]
        path, key = match["path"], match["key"]
        if path not in ("metadata.labels", "metadata.annotations"):
            return [Problem("fieldPath", f"{path} does not support a subscript")]
        try:
            check_label_key(key.lower() if path == "metadata.annotations" else key)
        except ValueError as exc:
            return [Problem("fieldPath", str(exc))]
        return []


class ResourceFieldSelector(KubeModel):
    """A resource of the task's container (``limits.cpu``...), optionally divided."""

    container_name: Literal["base"] | None = None
    resource: str
    divisor: str | None = None

    def problems(self, *, volume: bool) -> list[Problem]:
        problems: list[Problem] = []
        if volume and self.container_name is None:
            problems.append(Problem("containerName", "field required"))
        hugepages = self.resource.startswith(("limits.hugepages-", "requests.hugepages-"))
        if self.resource not in _RESOURCE_FIELDS and not hugepages:
            problems.append(
                Problem(
                    "resource",
                    f"must be one of {', '.join(sorted(_RESOURCE_FIELDS))} or "
                    "limits./requests.hugepages-<size>",
                )
            )
        elif self.divisor is not None:
            allowed = _CPU_DIVISORS if self.resource.endswith(".cpu") else _BYTE_DIVISORS
            if self.divisor not in allowed:
                problems.append(Problem("divisor", f"must be one of {', '.join(sorted(allowed))}"))
        return problems


class ConfigMapKeySelector(KubeModel):
    name: DNSSubdomain
    key: ConfigKey
    optional: bool | None = None


class SecretKeySelector(KubeModel):
    name: DNSSubdomain
    key: ConfigKey
    optional: bool | None = None


class EnvVarSource(KubeModel):
    """Exactly one of: a pod field, a container resource, a ConfigMap key, a Secret key."""

    field_ref: ObjectFieldSelector | None = None
    resource_field_ref: ResourceFieldSelector | None = None
    config_map_key_ref: ConfigMapKeySelector | None = None
    secret_key_ref: SecretKeySelector | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        chosen = [name for name, value in self if value is not None]
        if len(chosen) != 1:
            raise SpecError(
                [
                    Problem(
                        "",
                        "needs exactly one of: fieldRef, resourceFieldRef, configMapKeyRef, "
                        "secretKeyRef",
                    )
                ]
            )
        problems: list[Problem] = []
        if self.field_ref is not None:
            problems += _under("fieldRef", self.field_ref.problems(_ENV_FIELD_PATHS))
        if self.resource_field_ref is not None:
            problems += _under("resourceFieldRef", self.resource_field_ref.problems(volume=False))
        _problems(problems)
        return self


def _under(prefix: str, problems: list[Problem]) -> list[Problem]:
    return [Problem(f"{prefix}.{p.field}" if p.field else prefix, p.message) for p in problems]


_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


class EnvVar(KubeModel):
    """An environment variable: a ``value``, or ``valueFrom`` a pod field, a resource, a
    ConfigMap or a Secret key (``valueFrom`` is kept as its canonical JSON).

    Names follow the strict (pre-1.34) rule, which every supported cluster accepts.
    """

    name: str = Field(min_length=1, max_length=256)
    value: str | None = None
    value_from: Annotated[JsonObject | None, canonical(EnvVarSource)] = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        if not _ENV_NAME.fullmatch(self.name):
            problems.append(
                Problem(
                    "name",
                    f"{self.name!r} is not a valid variable name: letters, digits, '_', '-', "
                    "'.'; not starting with a digit",
                )
            )
        elif self.name in (".", "..") or self.name.startswith(".."):
            problems.append(Problem("name", "must not be '.' or '..' nor start with '..'"))
        if self.value is not None and self.value_from is not None:
            problems.append(Problem("valueFrom", "set either value or valueFrom, not both"))
        _problems(problems)
        return self


# -------------------------------------------------------------- environment from sources


class ConfigMapEnvSource(KubeModel):
    name: DNSSubdomain
    optional: bool | None = None


class SecretEnvSource(KubeModel):
    name: DNSSubdomain
    optional: bool | None = None


class EnvFromSource(KubeModel):
    """Every key of a ConfigMap (``configMapRef``) or a Secret (``secretRef``) as a
    variable, each name prefixed with ``prefix``. Keys that are not valid variable names
    are skipped by the kubelet (and reported as an event)."""

    prefix: str | None = None
    config_map_ref: ConfigMapEnvSource | None = None
    secret_ref: SecretEnvSource | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        chosen = [name for name in ("config_map_ref", "secret_ref") if getattr(self, name)]
        if not chosen:
            problems.append(Problem("", "needs one of: configMapRef, secretRef"))
        elif len(chosen) > 1:
            problems.append(Problem("secretRef", "set either configMapRef or secretRef, not both"))
        if self.prefix and not _ENV_NAME.fullmatch(self.prefix):
            problems.append(
                Problem(
                    "prefix",
                    f"{self.prefix!r} is not a valid variable name prefix: letters, digits, "
                    "'_', '-', '.'; not starting with a digit",
                )
            )
        _problems(problems)
        return self


# --------------------------------------------------------------------------------- ports

_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
Port = Annotated[int, Field(ge=1, le=65535)]


def _check_port_name(value: str) -> str:
    """An IANA service name, as the API server checks a container port's name."""
    if len(value) > 15:
        raise ValueError("must be at most 15 characters")
    if not _PORT_NAME.fullmatch(value) or "--" in value:
        raise ValueError(
            f"{value!r} is not a valid port name: lowercase letters, digits and single '-', "
            "starting and ending with a letter or digit"
        )
    if not any(char.isalpha() for char in value):
        raise ValueError("must contain at least one letter")
    return value


class ContainerPort(KubeModel):
    """A port the task's container declares (documentation for whoever reads the pod,
    and a name a Service or probe may refer to).

    ``hostPort`` and ``hostIP`` are refused: they bind a port on whichever node the pod
    lands on, in whichever cluster, and Pod Security 'baseline' forbids them.
    """

    container_port: Port
    name: Annotated[str, AfterValidator(_check_port_name)] | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_host_port(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        host = {
            key: value
            for key, value in data.items()
            if isinstance(key, str) and key.replace("_", "").lower() in ("hostport", "hostip")
        }
        _problems(
            [
                Problem(
                    "hostPort" if "port" in key.lower() else "hostIP",
                    "is not supported: a host port binds a port of whichever node, in "
                    "whichever cluster, the task lands on (and Pod Security 'baseline' "
                    "forbids it); reach the task through its pod IP or a Service",
                )
                for key, value in host.items()
                if value not in (None, 0, "")
            ]
        )
        return {key: value for key, value in data.items() if key not in host}


def port_problems(ports: tuple[JsonObject, ...]) -> list[Problem]:
    """Port names unique within one container, as the API server requires; each problem
    at ``[index].name``."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, port in enumerate(ports):
        name = port.get("name")
        if isinstance(name, str) and name in seen:
            problems.append(Problem(f"[{index}].name", f"duplicate {name!r}"))
        elif isinstance(name, str):
            seen.add(name)
    return problems


# ----------------------------------------------------------------------- security context

#: A user or group id: the API server takes 0..2^31-1.
Id = Annotated[int, Field(ge=0, le=_INT32_MAX)]


class SELinuxOptions(KubeModel):
    user: str | None = None
    role: str | None = None
    type: str | None = None
    level: str | None = None


class _ProfileModel(KubeModel):
    """A seccomp or AppArmor profile: ``localhostProfile`` with, and only with,
    ``Localhost``."""

    type: Literal["RuntimeDefault", "Unconfined", "Localhost"]
    localhost_profile: Annotated[str, Field(min_length=1, max_length=4095)] | None = None

    @model_validator(mode="after")
    def _localhost(self) -> Self:
        if self.type == "Localhost" and self.localhost_profile is None:
            raise SpecError([Problem("localhostProfile", "required when type is Localhost")])
        if self.type != "Localhost" and self.localhost_profile is not None:
            raise SpecError([Problem("localhostProfile", "may only be set when type is Localhost")])
        return self


class SeccompProfile(_ProfileModel):
    pass


class AppArmorProfile(_ProfileModel):
    pass


_CAPABILITY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_capability(value: str) -> str:
    if not _CAPABILITY.fullmatch(value) or len(value) > 64:
        raise ValueError(f"{value!r} is not a capability name, e.g. NET_BIND_SERVICE or ALL")
    return value


Capability = Annotated[str, AfterValidator(_check_capability)]


class Capabilities(KubeModel):
    add: tuple[Capability, ...] = ()
    drop: tuple[Capability, ...] = ()


class SecurityContext(KubeModel):
    """The task container's security settings (``container_security_context``).

    Checked against the API server's rules; whether a cluster or tenant permits them
    (Pod Security admission, privileged containers) is the cluster's and tenant's policy,
    applied when the pod is created. ``procMount: Unmasked`` needs a user namespace
    (``hostUsers: false``), which a task cannot ask for, so it is refused; Windows
    options are not accepted (dispatched pods run on Linux nodes).
    """

    allow_privilege_escalation: bool | None = None
    capabilities: Capabilities | None = None
    privileged: bool | None = None
    proc_mount: Literal["Default"] | None = None
    read_only_root_filesystem: bool | None = None
    run_as_group: Id | None = None
    run_as_non_root: bool | None = None
    run_as_user: Id | None = None
    se_linux_options: SELinuxOptions | None = None
    seccomp_profile: SeccompProfile | None = None
    app_armor_profile: AppArmorProfile | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        if self.allow_privilege_escalation is False:
            if self.privileged:
                problems.append(
                    Problem(
                        "allowPrivilegeEscalation",
                        "cannot be false when privileged is true",
                    )
                )
            if self.capabilities is not None and "CAP_SYS_ADMIN" in self.capabilities.add:
                problems.append(
                    Problem(
                        "allowPrivilegeEscalation",
                        "cannot be false when capabilities.add has CAP_SYS_ADMIN",
                    )
                )
        _problems(problems)
        return self


_SYSCTL = re.compile(r"([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?")


def _check_sysctl_name(value: str) -> str:
    if len(value) > 253 or not _SYSCTL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a sysctl name: lowercase words of letters, digits, '-' and "
            "'_' joined by '.' or '/', e.g. net.ipv4.tcp_keepalive_time"
        )
    return value


class Sysctl(KubeModel):
    name: Annotated[str, AfterValidator(_check_sysctl_name)]
    value: str


class PodSecurityContext(KubeModel):
    """The pod's security settings (``security_context``), held to the API server's
    rules; the cluster's and tenant's policy decides whether they are permitted.

    Sysctls outside the kubelet's safe set run only where a cluster allows them (the pod
    fails with ``SysctlForbidden`` elsewhere). Windows options are not accepted.
    """

    fs_group: Id | None = None
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = None
    run_as_group: Id | None = None
    run_as_non_root: bool | None = None
    run_as_user: Id | None = None
    supplemental_groups: tuple[Id, ...] = ()
    supplemental_groups_policy: Literal["Merge", "Strict"] | None = None
    se_linux_options: SELinuxOptions | None = None
    se_linux_change_policy: Literal["MountOption", "Recursive"] | None = None
    seccomp_profile: SeccompProfile | None = None
    app_armor_profile: AppArmorProfile | None = None
    sysctls: tuple[Sysctl, ...] = ()

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        names = [sysctl.name for sysctl in self.sysctls]
        for index, name in enumerate(names):
            if names.index(name) != index:
                problems.append(Problem(f"sysctls[{index}].name", f"duplicate {name!r}"))
        _problems(problems)
        return self


# ---------------------------------------------------------------------- names and DNS


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


IPAddress = Annotated[str, AfterValidator(_check_ip)]


class HostAlias(KubeModel):
    """An ``/etc/hosts`` entry of the pod: ``ip`` and the names that resolve to it."""

    ip: IPAddress
    hostnames: tuple[DNSSubdomain, ...] = ()


def _check_search_domain(value: str) -> str:
    check_dns_subdomain(value.removesuffix("."))
    return value


class PodDNSConfigOption(KubeModel):
    name: Annotated[str, Field(min_length=1)]
    value: str | None = None


#: The API server's limits on a pod's resolver configuration.
MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
MAX_SEARCH_CHARS = 2048


class PodDNSConfig(KubeModel):
    """Resolver settings merged into (or, with ``dnspolicy: None``, making up) the pod's
    ``/etc/resolv.conf``: at most 3 nameservers and 32 search domains."""

    nameservers: tuple[IPAddress, ...] = Field(default=(), max_length=MAX_NAMESERVERS)
    searches: tuple[Annotated[str, AfterValidator(_check_search_domain)], ...] = Field(
        default=(), max_length=MAX_SEARCHES
    )
    options: tuple[PodDNSConfigOption, ...] = ()

    @model_validator(mode="after")
    def _search_length(self) -> Self:
        if len(" ".join(self.searches)) > MAX_SEARCH_CHARS:
            raise SpecError(
                [Problem("searches", f"must have at most {MAX_SEARCH_CHARS} characters in all")]
            )
        return self


# ------------------------------------------------------------------------------- volumes


class KeyToPath(KubeModel):
    key: ConfigKey
    path: LocalPath
    mode: FileMode | None = None


class EmptyDirVolumeSource(KubeModel):
    """Scratch space; ``Memory`` for tmpfs. Hugepage media need hugepage resources the
    spec does not ask for, so they are refused."""

    medium: Literal["", "Memory"] | None = None
    size_limit: NonNegativeQuantity | None = None


class SecretVolumeSource(KubeModel):
    secret_name: DNSSubdomain
    items: tuple[KeyToPath, ...] = ()
    default_mode: FileMode | None = None
    optional: bool | None = None


class ConfigMapVolumeSource(KubeModel):
    name: DNSSubdomain
    items: tuple[KeyToPath, ...] = ()
    default_mode: FileMode | None = None
    optional: bool | None = None


class PersistentVolumeClaimVolumeSource(KubeModel):
    claim_name: DNSSubdomain
    read_only: bool | None = None


class DownwardAPIVolumeFile(KubeModel):
    path: LocalPath
    field_ref: ObjectFieldSelector | None = None
    resource_field_ref: ResourceFieldSelector | None = None
    mode: FileMode | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.field_ref is None) == (self.resource_field_ref is None):
            raise SpecError([Problem("", "needs exactly one of: fieldRef, resourceFieldRef")])
        problems: list[Problem] = []
        if self.field_ref is not None:
            problems += _under("fieldRef", self.field_ref.problems(_VOLUME_FIELD_PATHS))
        if self.resource_field_ref is not None:
            problems += _under("resourceFieldRef", self.resource_field_ref.problems(volume=True))
        _problems(problems)
        return self


class DownwardAPIVolumeSource(KubeModel):
    items: tuple[DownwardAPIVolumeFile, ...] = ()
    default_mode: FileMode | None = None


class SecretProjection(KubeModel):
    name: DNSSubdomain
    items: tuple[KeyToPath, ...] = ()
    optional: bool | None = None


class ConfigMapProjection(KubeModel):
    name: DNSSubdomain
    items: tuple[KeyToPath, ...] = ()
    optional: bool | None = None


class DownwardAPIProjection(KubeModel):
    items: tuple[DownwardAPIVolumeFile, ...] = ()


class ServiceAccountTokenProjection(KubeModel):
    audience: str | None = None
    #: The API server refuses less than 10 minutes and more than 2^32 s (default 1 h).
    expiration_seconds: Annotated[int, Field(ge=600, le=2**32)] | None = None
    path: LocalPath


class VolumeProjection(KubeModel):
    secret: SecretProjection | None = None
    config_map: ConfigMapProjection | None = None
    downward_api: DownwardAPIProjection | None = Field(default=None, alias="downwardAPI")
    service_account_token: ServiceAccountTokenProjection | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if sum(value is not None for _, value in self) != 1:
            raise SpecError(
                [
                    Problem(
                        "",
                        "needs exactly one of: secret, configMap, downwardAPI, serviceAccountToken",
                    )
                ]
            )
        return self

    def paths(self) -> list[tuple[str, str]]:
        """(field path within this projection, file path) of every file it writes."""
        if self.secret is not None:
            return [(f"secret.items[{i}].path", k.path) for i, k in enumerate(self.secret.items)]
        if self.config_map is not None:
            return [
                (f"configMap.items[{i}].path", k.path) for i, k in enumerate(self.config_map.items)
            ]
        if self.downward_api is not None:
            return [
                (f"downwardAPI.items[{i}].path", f.path)
                for i, f in enumerate(self.downward_api.items)
            ]
        if self.service_account_token is not None:
            return [("serviceAccountToken.path", self.service_account_token.path)]
        return []


class ProjectedVolumeSource(KubeModel):
    sources: tuple[VolumeProjection, ...] = ()
    default_mode: FileMode | None = None

    @model_validator(mode="after")
    def _distinct_paths(self) -> Self:
        seen: set[str] = set()
        problems: list[Problem] = []
        for index, source in enumerate(self.sources):
            for where, path in source.paths():
                if path in seen:
                    problems.append(
                        Problem(f"sources[{index}].{where}", f"duplicate path {path!r}")
                    )
                seen.add(path)
        _problems(problems)
        return self


class LocalObjectReference(KubeModel):
    name: DNSSubdomain


class CSIVolumeSource(KubeModel):
    """An inline CSI volume (secrets-store and similar drivers)."""

    driver: Annotated[str, Field(min_length=1, max_length=63)]
    read_only: bool | None = None
    fs_type: str | None = None
    volume_attributes: dict[str, str] = Field(default_factory=dict)
    node_publish_secret_ref: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _driver_name(self) -> Self:
        try:
            check_dns_subdomain(self.driver.lower())
        except ValueError as exc:
            raise SpecError([Problem("driver", str(exc))]) from None
        return self


class NFSVolumeSource(KubeModel):
    server: Annotated[str, Field(min_length=1)]
    path: str
    read_only: bool | None = None

    @model_validator(mode="after")
    def _absolute(self) -> Self:
        if not posixpath.isabs(self.path):
            raise SpecError([Problem("path", "must be an absolute path")])
        return self


#: Volume types Kubernetes has that a task may not use, and why.
_REFUSED_VOLUME_TYPES: Mapping[str, str] = {
    "hostPath": "node paths differ between clusters (and Pod Security 'baseline' forbids "
    "them); use a persistentVolumeClaim, csi or nfs volume",
    "ephemeral": "generic ephemeral volumes are not supported yet; use a persistentVolumeClaim",
    "image": "image volumes are not supported; copy the data in the task's own image",
    "gitRepo": "gitRepo volumes are deprecated; clone in the task or use an emptyDir",
    **dict.fromkeys(
        (
            "awsElasticBlockStore",
            "azureDisk",
            "azureFile",
            "cephfs",
            "cinder",
            "fc",
            "flexVolume",
            "flocker",
            "gcePersistentDisk",
            "glusterfs",
            "iscsi",
            "photonPersistentDisk",
            "portworxVolume",
            "quobyte",
            "rbd",
            "scaleIO",
            "storageos",
            "vsphereVolume",
        ),
        "in-tree storage types tie a task to one cluster's infrastructure; use a "
        "persistentVolumeClaim or csi volume",
    ),
}
_VOLUME_SOURCES = (
    "emptyDir",
    "secret",
    "configMap",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
    "csi",
    "nfs",
)


class Volume(KubeModel):
    """A pod volume: a ``name`` and exactly one source.

    Sources: ``emptyDir``, ``secret``, ``configMap``, ``persistentVolumeClaim``,
    ``projected``, ``downwardAPI``, ``csi``, ``nfs``. Node- and cloud-bound types (hostPath,
    in-tree cloud disks, iSCSI...) are refused: a task may run in any cluster.
    """

    name: DNSLabel
    empty_dir: EmptyDirVolumeSource | None = None
    secret: SecretVolumeSource | None = None
    config_map: ConfigMapVolumeSource | None = None
    persistent_volume_claim: PersistentVolumeClaimVolumeSource | None = None
    projected: ProjectedVolumeSource | None = None
    downward_api: DownwardAPIVolumeSource | None = Field(default=None, alias="downwardAPI")
    csi: CSIVolumeSource | None = None
    nfs: NFSVolumeSource | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported_type(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            given = {to_camel(key) for key in data if isinstance(key, str)}
            problems = [
                Problem(key, f"volume type {key!r} is not supported: {why}")
                for key, why in _REFUSED_VOLUME_TYPES.items()
                if key in given
            ]
            _problems(problems)
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        chosen = [name for name, value in self if name != "name" and value is not None]
        if not chosen:
            raise SpecError(
                [Problem("", f"needs a volume source, one of: {', '.join(_VOLUME_SOURCES)}")]
            )
        if len(chosen) > 1:
            fields = type(self).model_fields
            names = [fields[name].alias or name for name in chosen]
            raise SpecError(
                [
                    Problem(
                        names[1],
                        f"a volume has exactly one source; this one also sets {names[0]}",
                    )
                ]
            )
        return self


class VolumeMount(KubeModel):
    """Where a volume appears in the task's container.

    ``mountPath`` must be absolute (the API server only asks for it to be set; a relative
    one fails in the container runtime). ``Bidirectional`` propagation needs a privileged
    container, which a task cannot have, so it is refused.
    """

    name: DNSLabel
    mount_path: str
    read_only: bool | None = None
    sub_path: Annotated[str, AfterValidator(_check_sub_path)] | None = None
    sub_path_expr: Annotated[str, AfterValidator(_check_sub_path)] | None = None
    mount_propagation: Literal["None", "HostToContainer"] | None = None
    recursive_read_only: Literal["Disabled", "IfPossible", "Enabled"] | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Self:
        problems: list[Problem] = []
        if not self.mount_path.startswith("/"):
            problems.append(Problem("mountPath", "needs an absolute path"))
        if self.sub_path and self.sub_path_expr:
            problems.append(
                Problem("subPathExpr", "subPath and subPathExpr are mutually exclusive")
            )
        if self.recursive_read_only in ("IfPossible", "Enabled"):
            if not self.read_only:
                problems.append(
                    Problem("recursiveReadOnly", "may only be set when readOnly is true")
                )
            if self.mount_propagation not in (None, "None"):
                problems.append(
                    Problem(
                        "recursiveReadOnly",
                        "may only be set when mountPropagation is None or not set",
                    )
                )
        _problems(problems)
        return self


# -------------------------------------------------------------------------------- images

# The reference grammar of github.com/distribution/reference, which the kubelet parses
# (ParseNormalizedNamed); a name it refuses leaves the container in InvalidImageName.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = (
    r"(?:" + _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*|\[(?:[a-fA-F0-9:]+)\])"
    r"(?::[0-9]+)?"
)
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    r"(?:(?P<domain>"
    + _DOMAIN
    + r")/)?(?P<path>"
    + _PATH_COMPONENT
    + r"(?:/"
    + _PATH_COMPONENT
    + r")*)(?::(?P<tag>"
    + _TAG
    + r"))?(?:@(?P<digest>"
    + _DIGEST
    + r"))?"
)
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")


def _normalized(image: str) -> str:
    # splitDockerDomain: a first component without '.' or ':' that is not "localhost" and
    # is lowercase names a Docker Hub repository, not a registry.
    first, slash, _ = image.partition("/")
    if not slash:
        return "docker.io/library/" + image
    if first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        return image
    return "docker.io/" + image


def check_image_reference(image: str) -> str:
    """A container image reference the kubelet can parse: ``python:3.12``,
    ``ghcr.io/org/app:1.0``, ``registry:5000/app@sha256:<64 hex>``."""
    hint = "e.g. 'python:3.12' or 'ghcr.io/org/image:tag'"
    if not image or any(char.isspace() for char in image):
        raise ValueError(f"needs an image reference without spaces, {hint}")
    if _IDENTIFIER.fullmatch(image):
        raise ValueError("a bare 64-character hex string is not an image reference")
    normalized = _normalized(image)
    remainder = normalized.partition("/")[2]
    repository = remainder.split("@", 1)[0].split(":", 1)[0]
    if repository.lower() != repository:
        raise ValueError(f"the repository name must be lowercase, {hint}")
    match = _REFERENCE.fullmatch(normalized)
    if match is None:
        raise ValueError(f"{image!r} is not a valid image reference, {hint}")
    if len(match["path"]) > 255:
        raise ValueError("the repository name must be at most 255 characters")
    if match["digest"]:
        algorithm, _, encoded = match["digest"].partition(":")
        if _DIGEST_LENGTHS.get(algorithm) != len(encoded) or encoded.lower() != encoded:
            raise ValueError(
                "the digest must be sha256/sha384/sha512 with lowercase hex of its length"
            )
    return image
