"""A naive, independent model of kube-scheduler's filters, to check the router against.

It works on raw Kubernetes dicts (nodes, the pods bound to them, and the pod manifest
``podspec`` builds), node by node, with no shapes, no frontier and no shared code with
``dispatcher.core``: quantities are parsed here again with ``decimal``.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

_SUFFIX = {
    "Ki": Decimal(1024),
    "Mi": Decimal(1024**2),
    "Gi": Decimal(1024**3),
    "Ti": Decimal(1024**4),
    "Pi": Decimal(1024**5),
    "Ei": Decimal(1024**6),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(1000),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}


def quantity(resource: str, text: Any) -> int:
    """Like the scheduler: millicores for cpu, else the value, rounded up."""
    text = str(text)
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            value = Decimal(text[: -len(suffix)]) * _SUFFIX[suffix]
            break
    else:
        value = Decimal(text)
    if resource == "cpu":
        value *= 1000
    return math.ceil(value)


def _container_requests(container: dict[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    out = {k: quantity(k, v) for k, v in (resources.get("limits") or {}).items()}
    out.update({k: quantity(k, v) for k, v in (resources.get("requests") or {}).items()})
    return out


def requests_of(pod: dict[str, Any]) -> dict[str, int]:
    spec = pod["spec"]
    total: dict[str, int] = {}
    for container in spec.get("containers", []):
        for k, v in _container_requests(container).items():
            total[k] = total.get(k, 0) + v
    for container in spec.get("initContainers", []):
        for k, v in _container_requests(container).items():
            total[k] = max(total.get(k, 0), v)
    return total


def _tolerated(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint["effect"]:
            continue
        if tol.get("key") and tol["key"] != taint["key"]:
            continue
        if tol.get("operator", "Equal") == "Exists":
            return True
        if tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def _expression(expr: dict[str, Any], value: str | None) -> bool:
    op, values = expr["operator"], expr.get("values", [])
    if op == "In":
        return value in values
    if op == "NotIn":
        return value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if value is None or not value.lstrip("-").isdigit():
        return False
    return int(value) > int(values[0]) if op == "Gt" else int(value) < int(values[0])


def _affinity(pod_spec: dict[str, Any], node: dict[str, Any]) -> bool:
    required = (
        (pod_spec.get("affinity") or {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    if not required:
        return True
    labels = node["metadata"].get("labels", {})
    for term in required["nodeSelectorTerms"]:
        expressions = term.get("matchExpressions", [])
        fields = term.get("matchFields", [])
        if not expressions and not fields:
            continue
        if all(_expression(e, labels.get(e["key"])) for e in expressions) and all(
            _expression(f, node["metadata"]["name"]) for f in fields
        ):
            return True
    return False


def accepts(
    node: dict[str, Any],
    bound_pods: list[dict[str, Any]],
    pod: dict[str, Any],
    *,
    ever: bool = False,
) -> bool:
    """Whether the scheduler would bind ``pod`` to ``node`` now.

    With ``ever``, as if the node were empty, ready and uncordoned: could it ever?
    """
    spec = pod["spec"]
    status = node.get("status", {})
    if not ever:
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        if not ready or node.get("spec", {}).get("unschedulable"):
            return False
    for taint in node.get("spec", {}).get("taints", []) or []:
        if taint["effect"] in ("NoSchedule", "NoExecute") and not _tolerated(
            taint, spec.get("tolerations", [])
        ):
            return False
    labels = node["metadata"].get("labels", {})
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    if not _affinity(spec, node):
        return False
    free = {k: quantity(k, v) for k, v in status.get("allocatable", {}).items()}
    live = (
        []
        if ever
        else [p for p in bound_pods if p["status"]["phase"] not in ("Succeeded", "Failed")]
    )
    for other in live:
        for k, v in requests_of(other).items():
            free[k] = free.get(k, 0) - v
    free["pods"] = free.get("pods", 0) - len(live)
    wanted = requests_of(pod)
    wanted["pods"] = 1
    return all(free.get(k, 0) >= v for k, v in wanted.items() if v)


def accepting_nodes(
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    pod: dict[str, Any],
    *,
    ever: bool = False,
) -> list[str]:
    by_node: dict[str, list[dict[str, Any]]] = {}
    for other in pods:
        by_node.setdefault(other["spec"].get("nodeName", ""), []).append(other)
    return [
        n["metadata"]["name"]
        for n in nodes
        if accepts(n, by_node.get(n["metadata"]["name"], []), pod, ever=ever)
    ]
