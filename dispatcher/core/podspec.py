"""The pod manifest for a task on a cluster; pure, no I/O, no clock.

``build_pod(task, placement, job_id=..., attempt=..., submitted_at=...)`` returns a plain
JSON-able dict in the API's camelCase shape. ``placement`` (from a routing ``Decision``)
brings the cluster's pod defaults and, when the task asks for a GPU model, the node labels
naming that model, which become required node affinity: the scheduler then keeps the pod on
the nodes routing judged, not on any GPU node. The pod carries what ties it to its job
record after a restart (reattach):

- labels ``kube-dispatcher.dev/managed-by``, ``/job-id`` and ``/attempt`` (a label selector
  lists our pods with one watch per cluster);
- annotations ``/idempotency-key`` and ``/submitted-at``. The task spec itself is not
  copied onto the pod (its literal env values may be credentials): the job record, which
  exists before the pod, holds it.

The pod name is deterministic (task name, a hash of the job id, the attempt), so creating
the same attempt twice fails with 409 Conflict instead of making a second pod.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dispatcher.core import quantity
from dispatcher.core.names import check_label_value, sanitize_dns_label
from dispatcher.core.scheduling import pod_constraints, pod_namespace
from dispatcher.core.spec import XCOM_SIDECAR_RESOURCES, PodDefaults, TaskSpec
from dispatcher.core.xcom import XCOM_MOUNT, XCOM_SIDECAR_NAME, XCOM_VOLUME, sidecar_command

#: The node label kube-scheduler matches a node's name by (``avoid_nodes``).
HOSTNAME_LABEL = "kubernetes.io/hostname"

__all__ = [
    "ATTEMPT_LABEL",
    "CONTAINER_NAME",
    "IDEMPOTENCY_KEY_ANNOTATION",
    "JOB_ID_LABEL",
    "MANAGED_BY_LABEL",
    "MANAGED_BY_VALUE",
    "SUBMITTED_AT_ANNOTATION",
    "TERMINATION_MESSAGE_PATH",
    "Placement",
    "build_pod",
    "managed_pods_selector",
    "pod_name",
]

MANAGED_BY_LABEL = "kube-dispatcher.dev/managed-by"
MANAGED_BY_VALUE = "kube-dispatcher"
JOB_ID_LABEL = "kube-dispatcher.dev/job-id"
ATTEMPT_LABEL = "kube-dispatcher.dev/attempt"
IDEMPOTENCY_KEY_ANNOTATION = "kube-dispatcher.dev/idempotency-key"
SUBMITTED_AT_ANNOTATION = "kube-dispatcher.dev/submitted-at"

#: KubernetesPodOperator's container name; outcome messages name it.
CONTAINER_NAME = "base"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

_NAME_MAX = 63
_HASH_CHARS = 10


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task's pod goes: the cluster, its pod defaults, GPU model pinning."""

    cluster: str
    defaults: PodDefaults = field(default_factory=PodDefaults)
    #: Node labels naming the requested GPU model: label key -> accepted values (ORed).
    gpu_model_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Nodes the pod must stay off (``kubernetes.io/hostname`` NotIn): capacity reserved
    #: there for a task ahead in the queue (``dispatcher.core.fairshare``).
    avoid_nodes: tuple[str, ...] = ()
    #: Pull Secrets the cluster's registries add (``dispatcher.core.copies.Registry``).
    pull_secrets: tuple[str, ...] = ()


def managed_pods_selector() -> str:
    """The label selector that lists every pod the dispatcher created."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"


def pod_name(task_name: str | None, job_id: str, attempt: int) -> str:
    """``<task>-<hash of job id>-<attempt>``: a valid RFC 1123 label of at most 63."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:_HASH_CHARS]
    suffix = f"-{digest}-{attempt}"
    base = sanitize_dns_label(task_name or "", max_length=_NAME_MAX - len(suffix)) or "task"
    return base + suffix


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("submitted_at must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _container(task: TaskSpec) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    requests = dict(task.container_resources.requests)
    limits = dict(task.container_resources.limits)
    if task.gpus and quantity.GPU not in requests and quantity.GPU not in limits:
        # Asked through requirements.gpus: the pod must still reserve them.
        limits[quantity.GPU] = str(task.gpus)
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": task.image,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": task.termination_message_policy,
    }
    if task.cmds:
        container["command"] = list(task.cmds)
    if task.arguments:
        container["args"] = list(task.arguments)
    if task.env_vars:
        container["env"] = [env.to_k8s() for env in task.env_vars]
    if task.env_from:
        container["envFrom"] = [dict(source) for source in task.env_from]
    if task.ports:
        container["ports"] = [dict(port) for port in task.ports]
    if resources:
        container["resources"] = resources
    if task.volume_mounts:
        container["volumeMounts"] = [dict(mount) for mount in task.volume_mounts]
    if task.image_pull_policy:
        container["imagePullPolicy"] = task.image_pull_policy
    if task.container_security_context:
        container["securityContext"] = dict(task.container_security_context)
    return container


def _xcom_sidecar(image: str, pod: str) -> dict[str, Any]:
    """The native sidecar that prints ``return.json`` to its log when stopped
    (``dispatcher.core.xcom``); restricted, as Pod Security 'restricted' asks."""
    return {
        "name": XCOM_SIDECAR_NAME,
        "image": image,
        "command": sidecar_command(pod),
        "restartPolicy": "Always",
        "resources": {"requests": dict(XCOM_SIDECAR_RESOURCES.requests)},
        "volumeMounts": [dict(XCOM_MOUNT, readOnly=True)],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _pod_fields(task: TaskSpec) -> dict[str, Any]:
    """The pod-level fields a task carries over as they are."""
    fields: dict[str, Any] = {
        "securityContext": dict(task.security_context) if task.security_context else None,
        "terminationGracePeriodSeconds": task.termination_grace_period,
        "automountServiceAccountToken": task.automount_service_account_token,
        "hostAliases": [dict(alias) for alias in task.host_aliases] or None,
        "dnsPolicy": task.dnspolicy,
        "dnsConfig": dict(task.dns_config) if task.dns_config is not None else None,
        "hostname": task.hostname,
        "subdomain": task.subdomain,
        "runtimeClassName": task.runtime_class_name,
    }
    return {key: value for key, value in fields.items() if value is not None}


def _affinity(task: TaskSpec, placement: Placement) -> dict[str, Any] | None:
    affinity = task.affinity.to_k8s() if task.affinity is not None else {}
    if not placement.gpu_model_labels and not placement.avoid_nodes:
        return affinity or None
    pins: list[dict[str, Any] | None] = [
        {"key": key, "operator": "In", "values": list(values)}
        for key, values in sorted(placement.gpu_model_labels.items())
    ] or [None]
    avoid = (
        [{"key": HOSTNAME_LABEL, "operator": "NotIn", "values": sorted(placement.avoid_nodes)}]
        if placement.avoid_nodes
        else []
    )
    terms = task.affinity.required_terms if task.affinity is not None else None
    # Terms are ORed and expressions ANDed: (t1 or t2) and (m1 or m2) becomes
    # (t1 and m1) or (t1 and m2) or (t2 and m1) or (t2 and m2). Nodes to avoid are
    # ANDed into every term.
    base = [term.to_k8s() for term in terms] if terms else [{}]
    combined = [
        {
            **term,
            "matchExpressions": [
                *term.get("matchExpressions", []),
                *([pin] if pin is not None else []),
                *avoid,
            ],
        }
        for term in base
        for pin in pins
    ]
    node_affinity = dict(affinity.get("nodeAffinity", {}))
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": combined
    }
    return {**affinity, "nodeAffinity": node_affinity}


def build_pod(
    task: TaskSpec,
    placement: Placement,
    *,
    job_id: str,
    attempt: int,
    submitted_at: datetime,
) -> dict[str, Any]:
    """The pod for one attempt of a job, placed as ``placement`` says.

    ``job_id`` must be a valid label value (the dispatcher generates it); ``attempt``
    counts from 0. Raises ``ValueError`` otherwise.
    """
    check_label_value(job_id)
    if not job_id:
        raise ValueError("job_id must not be empty")
    if attempt < 0:
        raise ValueError("attempt must not be negative")
    defaults = placement.defaults
    constraints = pod_constraints(task, defaults)
    labels = {
        **defaults.labels,
        **task.labels,
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        JOB_ID_LABEL: job_id,
        ATTEMPT_LABEL: str(attempt),
    }
    annotations = {**defaults.annotations, **task.annotations}
    if task.idempotency_key is not None:
        annotations[IDEMPOTENCY_KEY_ANNOTATION] = task.idempotency_key
    annotations[SUBMITTED_AT_ANNOTATION] = _rfc3339(submitted_at)

    name = pod_name(task.name, job_id, attempt)
    container = _container(task)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
    }
    init = [c.to_k8s() for c in task.init_containers]
    volumes = [dict(volume) for volume in task.volumes]
    if task.xcom_sidecar:
        # Last, so that it starts once the task's own init containers are done.
        init.append(_xcom_sidecar(defaults.xcom_sidecar_image, name))
        volumes.append({"name": XCOM_VOLUME, "emptyDir": {}})
        container["volumeMounts"] = [*container.get("volumeMounts", ()), dict(XCOM_MOUNT)]
    if init:
        spec["initContainers"] = init
    if constraints.node_selector:
        spec["nodeSelector"] = dict(constraints.node_selector)
    if constraints.tolerations:
        spec["tolerations"] = [t.to_k8s() for t in constraints.tolerations]
    affinity = _affinity(task, placement)
    if affinity:
        spec["affinity"] = affinity
    if volumes:
        spec["volumes"] = volumes
    service_account = task.service_account_name or defaults.service_account_name
    if service_account:
        spec["serviceAccountName"] = service_account
    priority_class = task.priority_class_name or defaults.priority_class_name
    if priority_class:
        spec["priorityClassName"] = priority_class
    pull_secrets = dict.fromkeys(
        (*task.image_pull_secrets, *defaults.image_pull_secrets, *placement.pull_secrets)
    )
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    if task.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = task.active_deadline_seconds
    spec.update(_pod_fields(task))

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": pod_namespace(task, defaults),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }
