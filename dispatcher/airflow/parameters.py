"""KubernetesPodOperator parameters -> a dispatcher task spec; no I/O, no Airflow.

A DAG written for ``KubernetesPodOperator`` moves over by changing the import and the
class name. Every KPO parameter falls in exactly one of these groups:

- ``CARRIED_OVER``: taken by the operator's signature and translated into the task spec
  (``image``, ``cmds``, ``env_vars``, ``container_resources``, a pod template with
  ``pod_template_fields``...) or honoured by the
  operator (``get_logs``, ``do_xcom_push``, ``deferrable``, ``skip_on_exit_code``,
  ``poll_interval``: how often the job is asked while its pod has not started).
- ``POD_FIELDS``: pod fields the task spec has under the same name (``env_from``,
  ``init_containers``, ``security_context``, ``host_aliases``...; ``configmaps`` extends
  ``env_from``), translated by ``pod_fields``.
- ``ROUTING_HINTS``: the parameters that chose the cluster (``in_cluster``,
  ``kubernetes_conn_id``, ``cluster_context``, ``config_file``) become
  ``requirements.cluster_hints`` (``cluster_hints``), which routing reads through the
  dispatcher's ``routing.airflow_connections`` table; never a refusal, and no
  credential is read.
- ``NO_EFFECT``: how KPO watches a pod from the worker (poll intervals, event dumps); the
  dispatcher watches pods itself, so these are accepted and change nothing.
- ``REFUSED``: what the dispatcher cannot honour (host networking, another
  scheduler...). Refused when the DAG is parsed, with why and what to use
  instead, never silently dropped.

Kubernetes model objects (``k8s.V1Volume``) and plain dicts are both accepted; models
become the API's JSON. ``tests/airflow/test_kpo_parameters.py`` checks that the groups
cover every parameter of the installed provider's KubernetesPodOperator (or of a pinned
list when the provider is not installed).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_camel

from dispatcher.core import CONTAINER_NAME, TaskSpec, parse_task_spec
from dispatcher.core.quantity import GPU
from dispatcher.errors import Problem, SpecError

__all__ = [
    "CARRIED_OVER",
    "NO_EFFECT",
    "POD_FIELDS",
    "REFUSED",
    "ROUTING_HINTS",
    "SPEC_PARAMETERS",
    "Refusal",
    "airflow_labels",
    "cluster_hints",
    "container_resources",
    "dag_owner",
    "idempotency_key",
    "over_template",
    "plain",
    "pod_fields",
    "pod_template_fields",
    "refusals",
    "requirements",
    "secrets_to_spec",
    "validate_spec",
]

#: The idempotency key's longest form; longer ones are hashed.
MAX_KEY_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a KPO parameter cannot be honoured here, and what to do instead."""

    why: str
    instead: str
    #: Values that ask for nothing (a default); passing them is harmless and accepted.
    neutral: tuple[Any, ...] = (None,)

    def applies_to(self, value: Any) -> bool:
        return not any(value is n or value == n for n in self.neutral)


_EMPTY: tuple[Any, ...] = (None, [], (), {}, "")
REFUSED: Mapping[str, Refusal] = {
    "hostnetwork": Refusal(
        "host networking would tie the task to a node's network, which differs per cluster "
        "(and Pod Security 'baseline' forbids it)",
        "talk to services through their cluster DNS names",
        neutral=(None, False),
    ),
    "schedulername": Refusal(
        "every cluster schedules dispatched pods with its own default scheduler, the one "
        "routing predicts; another scheduler may not exist in the cluster chosen",
        "express placement with node_selector, tolerations, affinity or requirements",
    ),
    "durable": Refusal(
        "each try is one dispatcher job, named by its idempotency key: a restarted worker "
        "always finds the job it submitted",
        "to start a new pod after a worker restart, set reattach_on_restart=False",
        neutral=(None, True),
    ),
    "on_kill_action": Refusal(
        "killing the task cancels its job, and the dispatcher deletes a cancelled job's "
        "pod so that it cannot run on unobserved",
        "to inspect pods of failed tasks, set on_finish_action='keep_pod' or "
        "'delete_succeeded_pod'",
        neutral=(None, "delete_pod"),
    ),
    "callbacks": Refusal(
        "KubernetesPodOperatorCallback hooks into the Kubernetes client on the worker, "
        "which this operator does not use",
        "use Airflow's on_success_callback/on_failure_callback",
        neutral=_EMPTY,
    ),
    "progress_callback": Refusal(
        "log lines go to the task log; there is no per-line callback",
        "read the task log, or have the task write progress to its own store",
    ),
    "log_formatter": Refusal(
        "log lines are logged as '[base] <line>'",
        "use container_name_log_prefix_enabled=False for bare lines",
    ),
    "trigger_kwargs": Refusal(
        "the deferrable mode uses DispatcherJobTrigger, which takes no KPO trigger arguments",
        "remove trigger_kwargs",
        neutral=_EMPTY,
    ),
    "random_name_suffix": Refusal(
        "pod names are <name>-<job hash>-<attempt>, so retries and failover never clash",
        "remove random_name_suffix=False; find pods by the job id in the task log",
        neutral=(None, True),
    ),
    "base_container_name": Refusal(
        f"the task's container is always named {CONTAINER_NAME!r}",
        "remove base_container_name",
        neutral=(None, CONTAINER_NAME),
    ),
    "container_logs": Refusal(
        f"the task's container, {CONTAINER_NAME!r}, is the one whose log is followed",
        "remove container_logs",
        neutral=(None, True, CONTAINER_NAME, [CONTAINER_NAME], (CONTAINER_NAME,)),
    ),
}

#: Accepted for compatibility; the dispatcher does what these tune on the worker.
NO_EFFECT: Mapping[str, str] = {
    "startup_check_interval_seconds": "the dispatcher watches pod start-up itself",
    "base_container_status_polling_interval": "the operator long-polls the dispatcher",
    "logging_interval": "the trigger streams the log into the task log while deferred",
    "log_events_on_failure": "a failed job's message carries the dispatcher's classification",
    "log_pod_spec_on_failure": "the pod spec is the task spec; the routing decision is logged",
    "log_events_on_startup": "the dispatcher watches pod start-up and its events itself",
    "init_container_logs": "only the task container's log is streamed into the task log; "
    "read an init container's with kubectl logs -c NAME while its pod is kept",
    "xcom_sidecar_container_security_context": "the XCom sidecar runs with a restricted "
    "securityContext of its own (non-root, no privilege escalation, no capabilities, "
    "RuntimeDefault seccomp)",
}

#: KPO parameters that are task spec fields of the same name and meaning; ``configmaps``
#: (ConfigMap names) extends ``env_from``, as in KPO.
POD_FIELDS: Mapping[str, str] = {
    "env_from": "env_from",
    "configmaps": "env_from",
    "init_containers": "init_containers",
    "ports": "ports",
    "security_context": "security_context",
    "container_security_context": "container_security_context",
    "termination_grace_period": "termination_grace_period",
    "automount_service_account_token": "automount_service_account_token",
    "host_aliases": "host_aliases",
    "dnspolicy": "dnspolicy",
    "dns_config": "dns_config",
    "hostname": "hostname",
    "subdomain": "subdomain",
    "runtime_class_name": "runtime_class_name",
}

#: KPO parameters that chose the cluster; they become ``requirements.cluster_hints``.
ROUTING_HINTS = frozenset({"in_cluster", "kubernetes_conn_id", "cluster_context", "config_file"})

#: What the operator passes to ``pod_fields`` and ``cluster_hints`` rather than to
#: BaseOperator.
SPEC_PARAMETERS = frozenset({*POD_FIELDS, *ROUTING_HINTS})

#: KPO parameters this package honours (into the spec, or in the operator).
CARRIED_OVER = frozenset(
    {
        "namespace",
        "image",
        "name",
        "cmds",
        "arguments",
        "volume_mounts",
        "volumes",
        "env_vars",
        "secrets",
        "labels",
        "reattach_on_restart",
        "startup_timeout_seconds",
        "schedule_timeout_seconds",
        "get_logs",
        "image_pull_policy",
        "annotations",
        "container_resources",
        "affinity",
        "node_selector",
        "image_pull_secrets",
        "service_account_name",
        "tolerations",
        "do_xcom_push",
        "priority_class_name",
        "pod_runtime_info_envs",
        "skip_on_exit_code",
        "deferrable",
        "on_finish_action",
        "is_delete_operator_pod",
        "termination_message_policy",
        "active_deadline_seconds",
        "container_name_log_prefix_enabled",
        "poll_interval",
        "pod_template_file",
        "pod_template_dict",
        "full_pod_spec",
    }
)


def refusals(kwargs: Mapping[str, Any], table: Mapping[str, Refusal] = REFUSED) -> list[str]:
    """One line per parameter of ``table`` that asks for something: what, why, instead."""
    return [
        f"{name}: {table[name].why}; {table[name].instead}"
        for name, value in kwargs.items()
        if name in table and table[name].applies_to(value)
    ]


# ----------------------------------------------------------------------------- values


@functools.cache
def _api_client() -> Any:
    # Only for sanitize_for_serialization: no configuration is read or changed and no
    # connection is made.
    from kubernetes.client import ApiClient  # noqa: PLC0415 - only when models are passed

    return ApiClient()


def plain(value: Any) -> Any:
    """Kubernetes model objects (at any depth) as the API's JSON; other values as they are.

    Enums (``OnFinishAction.DELETE_POD``) become their values.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "openapi_types") and hasattr(value, "attribute_map"):
        return _api_client().sanitize_for_serialization(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    enum_value = getattr(value, "value", None)
    if isinstance(enum_value, str):
        return enum_value
    return value


def api_object(value: Any) -> Any:
    """A volume or volume mount as the API's JSON: models serialized, and the field names
    of a dict's first two levels camelCased (``persistent_volume_claim`` ->
    ``persistentVolumeClaim``), which are always API fields; deeper keys may be user
    data and stay as they are."""
    data = plain(value)
    if not isinstance(data, Mapping):
        return data
    return {
        to_camel(k): ({to_camel(kk): vv for kk, vv in v.items()} if isinstance(v, Mapping) else v)
        for k, v in data.items()
    }


_LEGACY_RESOURCES = {
    "request_cpu": ("requests", "cpu"),
    "request_memory": ("requests", "memory"),
    "request_ephemeral_storage": ("requests", "ephemeral-storage"),
    "limit_cpu": ("limits", "cpu"),
    "limit_memory": ("limits", "memory"),
    "limit_ephemeral_storage": ("limits", "ephemeral-storage"),
    "limit_gpu": ("limits", GPU),
}


def container_resources(value: Any) -> dict[str, Any] | None:
    """``container_resources`` (or the old ``resources``): a ``V1ResourceRequirements``,
    ``{"requests": ..., "limits": ...}``, or Airflow 1's flat ``{"limit_gpu": 1, ...}``."""
    data = plain(value)
    if data is None:
        return None
    if not isinstance(data, Mapping):
        return data  # type: ignore[no-any-return]  # the spec check reports the type
    if set(data) & set(_LEGACY_RESOURCES):
        out: dict[str, dict[str, Any]] = {"requests": {}, "limits": {}}
        for key, amount in data.items():
            if key in _LEGACY_RESOURCES and amount is not None:
                section, resource = _LEGACY_RESOURCES[key]
                out[section][resource] = str(amount)
            elif key not in _LEGACY_RESOURCES:
                out.setdefault(key, amount)
        return {k: v for k, v in out.items() if v}
    # Resource claims (DRA) have no place in the spec; the check reports them if set.
    return {k: v for k, v in data.items() if not (k == "claims" and not v)}


def requirements(
    requirements: Any,
    *,
    gpus: int | None,
    gpu_model: str | None,
    hints: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The routing requirements: ``requirements=`` (a dict or ``Requirements``) with the
    ``gpus``/``gpu_model`` shortcuts and the cluster ``hints`` (``cluster_hints``)
    folded in; a shortcut contradicting it is an error."""
    if hasattr(requirements, "model_dump"):
        requirements = requirements.model_dump(exclude_defaults=True)
    merged = dict(requirements or {})
    if hints:
        merged["cluster_hints"] = {**dict(merged.get("cluster_hints") or {}), **hints}
    for name, value in (("gpus", gpus), ("gpu_model", gpu_model)):
        if value is None:
            continue
        if merged.get(name) not in (None, value):
            raise ValueError(
                f"{name}={value!r} contradicts requirements[{name!r}]={merged[name]!r}; "
                "set one of them"
            )
        merged[name] = value
    return merged or None


#: Airflow's ``[operators] default_owner``: a task that names no owner of its own.
AIRFLOW_DEFAULT_OWNER = "airflow"


def dag_owner(owner: Any) -> str | None:
    """The task's owner as ``requirements.owner`` (its fair-share tenant when submitted
    without authentication): the first of a comma-separated list; ``None`` for Airflow's
    default owner, which names nobody."""
    first = str(owner or "").split(",")[0].strip()
    return first[:256] if first and first != AIRFLOW_DEFAULT_OWNER else None


def secrets_to_spec(
    secrets: Iterable[Any] | None,
    env_from: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """KPO ``Secret`` objects as (env vars, volumes, volume mounts).

    ``Secret("env", "VAR", "name", "key")`` is one variable from one key;
    ``Secret("volume", "/path", "name")`` mounts the secret read-only;
    ``Secret("env", None, "name")`` (every key as a variable) is appended to
    ``env_from`` as a ``secretRef``, and refused when no ``env_from`` list is given.
    Objects are read by attribute, so the cncf.kubernetes provider is not needed.
    """
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, secret in enumerate(secrets or ()):
        deploy_type = getattr(secret, "deploy_type", None)
        target = getattr(secret, "deploy_target", None)
        name = getattr(secret, "secret", None)
        key = getattr(secret, "key", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"secrets[{index}] is not a Secret with a secret name")
        if deploy_type == "env":
            if not target and not key and env_from is not None:
                env_from.append({"secretRef": {"name": name}})
                continue
            if not target or not key:
                raise ValueError(
                    f"secrets[{index}] would inject every key of secret {name!r} (env_from), "
                    "which this caller does not pass on: use "
                    f"Secret('env', 'VARIABLE', {name!r}, 'key') for each variable"
                )
            env.append({"name": target, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}})
        elif deploy_type == "volume":
            if not target:
                raise ValueError(f"secrets[{index}] (a volume) needs a mount path")
            volume = f"secret-{index}-{_dns_part(name)}"[:63].rstrip("-")
            source: dict[str, Any] = {"secretName": name}
            items = plain(getattr(secret, "items", None))
            if items:
                source["items"] = items
            volumes.append({"name": volume, "secret": source})
            mounts.append({"name": volume, "mountPath": target, "readOnly": True})
        else:
            raise ValueError(f"secrets[{index}]: deploy_type must be 'env' or 'volume'")
    return env, volumes, mounts


def pod_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The task spec fields for the ``POD_FIELDS`` parameters in ``values`` (others are
    ignored). Models become the API's JSON; values that ask for nothing (``None``, empty)
    are left out; ``configmaps`` (names) extend ``env_from`` as ``configMapRef``s."""
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if name not in POD_FIELDS or value is None or value in ([], (), {}, ""):
            continue
        if name == "configmaps":
            names = [value] if isinstance(value, str) else list(value)
            refs = [{"configMapRef": {"name": plain(item)}} for item in names]
            fields["env_from"] = [*fields.get("env_from", ()), *refs]
        elif name == "env_from":
            fields["env_from"] = [*plain(list(value)), *fields.get("env_from", ())]
        else:
            fields[POD_FIELDS[name]] = plain(value)
    return fields


def cluster_hints(values: Mapping[str, Any]) -> dict[str, Any]:
    """``requirements.cluster_hints`` for the ``ROUTING_HINTS`` parameters in ``values``
    (names only, as given; ``None`` asks for nothing)."""
    return {
        name: value for name, value in values.items() if name in ROUTING_HINTS and value is not None
    }


# ----------------------------------------------------------------------------- templates

#: Pod template fields -> task spec fields (the rest of a template cannot carry over).
_TEMPLATE_METADATA = {
    "name": "name",
    "namespace": "namespace",
    "labels": "labels",
    "annotations": "annotations",
}
_TEMPLATE_POD = {
    "volumes": "volumes",
    "initContainers": "init_containers",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "nodeSelector": "node_selector",
    "serviceAccountName": "service_account_name",
    "serviceAccount": "service_account_name",
    "priorityClassName": "priority_class_name",
    "imagePullSecrets": "image_pull_secrets",
    "activeDeadlineSeconds": "active_deadline_seconds",
    "securityContext": "security_context",
    "terminationGracePeriodSeconds": "termination_grace_period",
    "automountServiceAccountToken": "automount_service_account_token",
    "hostAliases": "host_aliases",
    "dnsPolicy": "dnspolicy",
    "dnsConfig": "dns_config",
    "hostname": "hostname",
    "subdomain": "subdomain",
    "runtimeClassName": "runtime_class_name",
}
_TEMPLATE_CONTAINER = {
    "image": "image",
    "command": "cmds",
    "args": "arguments",
    "env": "env_vars",
    "envFrom": "env_from",
    "resources": "container_resources",
    "volumeMounts": "volume_mounts",
    "ports": "ports",
    "securityContext": "container_security_context",
    "imagePullPolicy": "image_pull_policy",
    "terminationMessagePolicy": "termination_message_policy",
}
_HOST_NAMESPACES = (
    "host namespaces tie the task to a node, which differs per cluster (and Pod Security "
    "'baseline' forbids them)"
)
#: Pod template fields that contradict routing or cannot work in every cluster, and why.
_TEMPLATE_REFUSED = {
    "nodeName": "pins the pod to one node of one cluster, while the dispatcher chooses the "
    "cluster and each cluster's scheduler the node; use node_selector or affinity",
    "schedulerName": REFUSED["schedulername"].why,
    "hostNetwork": _HOST_NAMESPACES,
    "hostPID": _HOST_NAMESPACES,
    "hostIPC": _HOST_NAMESPACES,
    "hostUsers": "user namespaces (hostUsers: false) need a feature not every cluster has, "
    "and the task spec has no such field",
}
#: The value of each of those that asks for nothing (the API's default).
_TEMPLATE_NEUTRAL = {
    "nodeName": "",
    "schedulerName": "default-scheduler",
    "hostNetwork": False,
    "hostPID": False,
    "hostIPC": False,
    "hostUsers": True,
}
#: Spec fields whose template and operator values are joined (template first); for the
#: others the operator's value, when given, replaces the template's (KPO's merge).
_LIST_FIELDS = (
    "env_vars",
    "env_from",
    "volumes",
    "volume_mounts",
    "init_containers",
    "tolerations",
    "ports",
    "image_pull_secrets",
)
_MAP_FIELDS = ("labels", "annotations", "node_selector")


def _camel_keys(value: Any) -> dict[str, Any]:
    return {to_camel(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


def pod_template_fields(template: Any, *, where: str = "pod_template_dict") -> dict[str, Any]:
    """A pod template (a ``V1Pod``, or its dict as in a template file) as task spec fields.

    Everything the task spec has carries over: metadata (name, namespace, labels,
    annotations), the pod's scheduling, volumes, init containers, security and DNS
    fields, and the task container (the one named ``base``, or the only one). Refused,
    each problem at its path under ``where``: what contradicts routing or cannot work in
    every cluster (``nodeName``, ``schedulerName``, host namespaces), a restart policy
    other than ``Never``, containers besides the task's, and fields the task spec does not
    have. Raises ``SpecError`` listing every problem.
    """
    document = _camel_keys(plain(template))
    problems = [
        Problem(
            f"{where}.{key}",
            "not carried over: a template has apiVersion, kind, metadata and spec only",
        )
        for key in document
        if key not in ("apiVersion", "kind", "metadata", "spec")
    ]
    fields: dict[str, Any] = {}
    for key, value in _camel_keys(document.get("metadata")).items():
        if value is None:
            continue
        if key in _TEMPLATE_METADATA:
            fields[_TEMPLATE_METADATA[key]] = value
        else:
            problems.append(
                Problem(
                    f"{where}.metadata.{key}", "not carried over: the task spec has no such field"
                )
            )
    spec = _camel_keys(document.get("spec"))
    for key, value in spec.items():
        path = f"{where}.spec.{key}"
        if value is None or key == "containers":
            continue
        if key in _TEMPLATE_REFUSED:
            if value != _TEMPLATE_NEUTRAL[key]:
                problems.append(Problem(path, f"not supported: {_TEMPLATE_REFUSED[key]}"))
        elif key == "restartPolicy":
            if value != "Never":
                problems.append(
                    Problem(
                        path,
                        "dispatched pods never restart (Never): a failed task is retried by "
                        "Airflow's retries, as a new job",
                    )
                )
        elif key in _TEMPLATE_POD:
            fields[_TEMPLATE_POD[key]] = value
        else:
            problems.append(Problem(path, "not carried over: the task spec has no such field"))
    containers = spec.get("containers") or []
    named = [c for c in containers if _camel_keys(c).get("name") == CONTAINER_NAME]
    base = named[0] if named else containers[0] if len(containers) == 1 else None
    for index, container in enumerate(containers):
        if container is not base:
            problems.append(
                Problem(
                    f"{where}.spec.containers[{index}]",
                    f"dispatched pods run one container, {CONTAINER_NAME!r}: run this one as "
                    "an init container with restartPolicy Always (a sidecar) or as its own "
                    "task",
                )
            )
    for key, value in _camel_keys(base).items():
        if value is None or key == "name":
            continue
        if key in _TEMPLATE_CONTAINER:
            fields[_TEMPLATE_CONTAINER[key]] = value
        else:
            index = containers.index(base)
            problems.append(
                Problem(
                    f"{where}.spec.containers[{index}].{key}",
                    "not carried over: the task spec has no such field",
                )
            )
    if problems:
        raise SpecError(problems)
    return fields


def over_template(template: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` (from the operator's parameters) laid over a template's fields, as KPO
    merges a pod template with its parameters: lists are joined (template first),
    labels, annotations and node selectors merged, and any other field the operator sets
    replaces the template's."""
    merged = dict(template)
    for name, value in spec.items():
        if name in _LIST_FIELDS and name in merged:
            merged[name] = [*merged[name], *value]
        elif name in _MAP_FIELDS and name in merged:
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def _dns_part(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "secret"


# ----------------------------------------------------------------------------- identity


def idempotency_key(
    dag_id: str, task_id: str, run_id: str, map_index: int | None, try_number: int
) -> str:
    """One key per task instance try: a re-run of the same try (a restarted worker)
    finds the job it submitted instead of starting another pod.

    ``airflow/<dag_id>/<task_id>/<map_index>/<try_number>/<run_id>``: dag and task ids
    cannot contain '/', and the run id, which can, comes last, so no two task instances
    share a key. Keys longer than the API allows are hashed whole.
    """
    index = -1 if map_index is None else map_index
    key = f"airflow/{dag_id}/{task_id}/{index}/{try_number}/{run_id}"
    if len(key) > MAX_KEY_LENGTH:
        return f"airflow/sha256/{hashlib.sha256(key.encode()).hexdigest()}"
    return key


_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def safe_label_value(text: str) -> str:
    """A valid label value standing for ``text``: as is if valid, else cleaned and
    suffixed with a short hash so different inputs stay different."""
    if _LABEL_VALUE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "", text)[:54]
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    return f"{cleaned}-{digest}" if cleaned else digest


def airflow_labels(
    dag_id: str, task_id: str, run_id: str, map_index: int | None, try_number: int
) -> dict[str, str]:
    """The labels KubernetesPodOperator puts on its pods, so dashboards keep working."""
    labels = {
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "try_number": str(try_number),
    }
    if map_index is not None and map_index >= 0:
        labels["map_index"] = str(map_index)
    return {key: safe_label_value(value) for key, value in labels.items()}


# ----------------------------------------------------------------------------- checks


def validate_spec(spec: Mapping[str, Any], *, task_id: str | None = None) -> TaskSpec:
    """The spec as the dispatcher will check it; ``SpecError`` lists every problem."""
    return parse_task_spec(dict(spec), source=f"task {task_id}" if task_id else None)


def has_unresolved(values: Sequence[Any]) -> bool:
    """Whether any value is only known when the task runs: a Jinja template, or an
    XComArg (``other_task.output``)."""

    def unresolved(value: Any) -> bool:
        if isinstance(value, str):
            return "{{" in value or "{%" in value
        if hasattr(value, "resolve") and hasattr(value, "iter_references"):
            return True
        if isinstance(value, Mapping):
            return any(unresolved(k) or unresolved(v) for k, v in value.items())
        if isinstance(value, list | tuple | set):
            return any(unresolved(v) for v in value)
        return False

    return any(unresolved(v) for v in values)
