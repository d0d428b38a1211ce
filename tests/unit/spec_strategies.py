"""Hypothesis strategies for task specs the dispatcher accepts, with every Kubernetes-shaped
field it passes through to the pod (tolerations, affinity, env ``valueFrom``, volumes,
volume mounts, resources), each object written in camelCase or in snake_case.

Values reach the edges of what Kubernetes allows (63-character label names, modes 0-0777,
weights 1-100, quantities with every suffix). Shared by the pure property tests and the
server-side dry-run test on the stack (tests/e2e/test_bad_input.py).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from pydantic.alias_generators import to_snake

Json = dict[str, Any]

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,12}[a-z0-9])?"
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,12}[A-Za-z0-9])?"

dns_labels = st.one_of(st.from_regex(_DNS_LABEL, fullmatch=True), st.just("a" * 63))
dns_subdomains = (
    st.lists(dns_labels, min_size=1, max_size=3).map(".".join).filter(lambda s: len(s) <= 253)
)
_name_parts = st.one_of(
    st.from_regex(_NAME_PART, fullmatch=True), st.just("N" * 63), st.just("a.b_c-d")
)
label_keys = st.one_of(
    _name_parts,
    st.tuples(dns_subdomains, _name_parts).map("/".join),
).filter(lambda key: not key.startswith("kube-dispatcher.dev/"))
label_values = st.one_of(st.just(""), _name_parts)
# Keys a pod's own labels never carry here (see task_specs), so matchLabelKeys may name them.
_env_names = st.from_regex(r"[A-Za-z_][-._A-Za-z0-9]{0,15}", fullmatch=True)
_config_keys = st.from_regex(r"[-_A-Za-z0-9][-._A-Za-z0-9]{0,15}", fullmatch=True).filter(
    lambda key: not key.startswith("..")
)
_local_paths = st.lists(
    st.from_regex(r"[-_A-Za-z0-9][-._A-Za-z0-9]{0,8}", fullmatch=True).filter(
        lambda part: not part.startswith("..")
    ),
    min_size=1,
    max_size=3,
).map("/".join)
_absolute_paths = _local_paths.map(lambda path: "/" + path)
_modes = st.integers(min_value=0, max_value=0o777)
_weights = st.integers(min_value=1, max_value=100)


def _key(name: str, snake: bool) -> str:
    return to_snake(name) if snake else name


def _object(draw: st.DrawFn, fields: Json) -> Json:
    """``fields`` (camelCase names, ``None`` for absent) written camel- or snake_case."""
    snake = draw(st.booleans())
    return {_key(name, snake): value for name, value in fields.items() if value is not None}


def _maybe(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    return draw(st.one_of(st.none(), strategy))


# ------------------------------------------------------------------------------ quantities


_ANY_SUFFIX = ("", "m", "k", "M", "G", "Ki", "Mi", "Gi", "e3")
_CPU_SUFFIX = ("", "m")
_BYTE_SUFFIX = ("", "k", "M", "G", "Ki", "Mi", "Gi", "e3")


@st.composite
def quantities(draw: st.DrawFn, suffixes: tuple[str, ...] = _ANY_SUFFIX) -> str:
    number = draw(st.integers(min_value=0, max_value=4096))
    if draw(st.booleans()):
        text = f"{number}.{draw(st.integers(min_value=0, max_value=99))}"
    else:
        text = str(number)
    return text + draw(st.sampled_from(suffixes))


@st.composite
def container_resources(draw: st.DrawFn) -> Json:
    requests: Json = {}
    limits: Json = {}
    for name in ("cpu", "memory", "ephemeral-storage"):
        suffixes = _CPU_SUFFIX if name == "cpu" else _BYTE_SUFFIX
        if draw(st.booleans()):
            requests[name] = draw(quantities(suffixes))
        if draw(st.booleans()):
            limits[name] = draw(quantities(suffixes))
        if name in requests and name in limits and _amount(requests[name]) > _amount(limits[name]):
            requests[name], limits[name] = limits[name], requests[name]
    if draw(st.booleans()):
        gpus = str(draw(st.integers(min_value=0, max_value=8)))
        limits["nvidia.com/gpu"] = gpus
        if draw(st.booleans()):
            requests["nvidia.com/gpu"] = gpus
    if draw(st.booleans()):
        pages = f"{2 * draw(st.integers(min_value=0, max_value=64))}Mi"
        limits["hugepages-2Mi"] = pages
        requests["hugepages-2Mi"] = pages
        if not {"cpu", "memory"} & {*requests, *limits}:
            requests["cpu"] = "100m"
    out: Json = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _amount(text: str) -> float:
    from dispatcher.core import quantity

    return float(quantity.parse_quantity(text))


# ------------------------------------------------------------------------------ placement


@st.composite
def tolerations(draw: st.DrawFn) -> Json:
    effect = draw(st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute"]))
    key = draw(st.one_of(st.just(""), label_keys))
    operator = "Exists" if not key else draw(st.sampled_from(["Exists", "Equal", None]))
    value = draw(label_values) if operator in ("Equal", None) else None
    seconds = (
        draw(st.integers(min_value=-(2**40), max_value=2**40))
        if effect == "NoExecute" and draw(st.booleans())
        else None
    )
    return _object(
        draw,
        {
            "key": key or None,
            "operator": operator,
            "value": value,
            "effect": effect or None,
            "tolerationSeconds": seconds,
        },
    )


@st.composite
def node_selector_requirements(draw: st.DrawFn) -> Json:
    operator = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]))
    if operator in ("In", "NotIn"):
        values = draw(st.lists(label_values, min_size=1, max_size=3))
    elif operator in ("Gt", "Lt"):
        # Negative numbers are not label values: no node label could hold one.
        values = [str(draw(st.integers(min_value=0, max_value=10**6)))]
    else:
        values = None
    return _object(draw, {"key": draw(label_keys), "operator": operator, "values": values})


@st.composite
def node_selector_terms(draw: st.DrawFn) -> Json:
    fields = None
    if draw(st.booleans()):
        fields = [
            _object(
                draw,
                {
                    "key": "metadata.name",
                    "operator": draw(st.sampled_from(["In", "NotIn"])),
                    "values": [draw(dns_subdomains)],
                },
            )
        ]
    expressions = draw(st.lists(node_selector_requirements(), max_size=3)) or None
    return _object(draw, {"matchExpressions": expressions, "matchFields": fields})


@st.composite
def label_selectors(draw: st.DrawFn) -> Json:
    expressions = []
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        operator = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        values = (
            draw(st.lists(label_values, min_size=1, max_size=3))
            if operator in ("In", "NotIn")
            else None
        )
        expressions.append(
            _object(draw, {"key": draw(label_keys), "operator": operator, "values": values})
        )
    labels = draw(st.dictionaries(label_keys, label_values, max_size=2)) or None
    return _object(draw, {"matchLabels": labels, "matchExpressions": expressions or None})


@st.composite
def pod_affinity_terms(draw: st.DrawFn) -> Json:
    selector = _maybe(draw, label_selectors())
    match_keys = mismatch_keys = None
    if selector is not None:
        taken = set((selector.get("matchLabels") or selector.get("match_labels") or {}).keys())
        for expression in (
            selector.get("matchExpressions") or selector.get("match_expressions") or ()
        ):
            taken.add(expression["key"])
        keys = draw(st.lists(label_keys, unique=True, max_size=4))
        free = [key for key in keys if key not in taken]
        split = draw(st.integers(min_value=0, max_value=len(free)))
        match_keys = free[:split] or None
        mismatch_keys = (free[split:] + [k for k in keys if k in taken]) or None
    return _object(
        draw,
        {
            "labelSelector": selector,
            "namespaceSelector": _maybe(draw, label_selectors()),
            "namespaces": draw(st.lists(dns_labels, max_size=2)) or None,
            "topologyKey": draw(
                st.one_of(
                    st.sampled_from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]),
                    label_keys,
                )
            ),
            "matchLabelKeys": match_keys,
            "mismatchLabelKeys": mismatch_keys,
        },
    )


@st.composite
def inter_pod_affinities(draw: st.DrawFn) -> Json:
    required = draw(st.lists(pod_affinity_terms(), max_size=2)) or None
    preferred = [
        _object(draw, {"weight": draw(_weights), "podAffinityTerm": draw(pod_affinity_terms())})
        for _ in range(draw(st.integers(min_value=0, max_value=2)))
    ]
    return _object(
        draw,
        {
            "requiredDuringSchedulingIgnoredDuringExecution": required,
            "preferredDuringSchedulingIgnoredDuringExecution": preferred or None,
        },
    )


@st.composite
def affinities(draw: st.DrawFn) -> Json:
    node = None
    if draw(st.booleans()):
        required = None
        if draw(st.booleans()):
            required = _object(
                draw,
                {
                    "nodeSelectorTerms": draw(
                        st.lists(node_selector_terms(), min_size=1, max_size=2)
                    )
                },
            )
        preferred = [
            _object(draw, {"weight": draw(_weights), "preference": draw(node_selector_terms())})
            for _ in range(draw(st.integers(min_value=0, max_value=2)))
        ]
        node = _object(
            draw,
            {
                "requiredDuringSchedulingIgnoredDuringExecution": required,
                "preferredDuringSchedulingIgnoredDuringExecution": preferred or None,
            },
        )
    return _object(
        draw,
        {
            "nodeAffinity": node,
            "podAffinity": _maybe(draw, inter_pod_affinities()),
            "podAntiAffinity": _maybe(draw, inter_pod_affinities()),
        },
    )


# ------------------------------------------------------------------------------ env vars

_ENV_FIELDS = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
]
_RESOURCES = [
    f"{s}.{n}" for s in ("limits", "requests") for n in ("cpu", "memory", "ephemeral-storage")
]


@st.composite
def field_refs(draw: st.DrawFn, paths: list[str]) -> Json:
    path = draw(
        st.one_of(
            st.sampled_from(paths),
            label_keys.map(lambda key: f"metadata.labels['{key}']"),
            label_keys.map(lambda key: f"metadata.annotations['{key}']"),
        )
    )
    return _object(draw, {"apiVersion": draw(st.sampled_from(["v1", None])), "fieldPath": path})


@st.composite
def resource_field_refs(draw: st.DrawFn, *, volume: bool) -> Json:
    resource = draw(st.sampled_from([*_RESOURCES, "limits.hugepages-2Mi"]))
    if resource.endswith(".cpu"):
        divisors = ["1m", "1"]
    else:
        divisors = ["1", "1k", "1M", "1G", "1Ki", "1Mi", "1Gi", "1Ti", "1Ei"]
    return _object(
        draw,
        {
            "containerName": "base" if volume or draw(st.booleans()) else None,
            "resource": resource,
            "divisor": _maybe(draw, st.sampled_from(divisors)),
        },
    )


@st.composite
def env_vars(draw: st.DrawFn) -> list[Json]:
    names = draw(st.lists(_env_names, unique=True, max_size=6))
    out = []
    for name in names:
        kind = draw(st.sampled_from(["value", "field", "resource", "configMap", "secret"]))
        if kind == "value":
            out.append({"name": name, "value": draw(st.text(max_size=20))})
            continue
        if kind == "field":
            source = {"fieldRef": draw(field_refs(_ENV_FIELDS))}
        elif kind == "resource":
            source = {"resourceFieldRef": draw(resource_field_refs(volume=False))}
        else:
            source = {
                f"{kind}KeyRef": _object(
                    draw,
                    {
                        "name": draw(dns_subdomains),
                        "key": draw(_config_keys),
                        "optional": _maybe(draw, st.booleans()),
                    },
                )
            }
        out.append(_object(draw, {"name": name, "valueFrom": _object(draw, source)}))
    return out


# ------------------------------------------------------------------------------- volumes


@st.composite
def _key_to_paths(draw: st.DrawFn) -> list[Json] | None:
    items = [
        _object(
            draw,
            {"key": draw(_config_keys), "path": path, "mode": _maybe(draw, _modes)},
        )
        for path in draw(st.lists(_local_paths, unique=True, max_size=3))
    ]
    return items or None


@st.composite
def _downward_files(draw: st.DrawFn) -> list[Json] | None:
    files = []
    for path in draw(st.lists(_local_paths, unique=True, max_size=3)):
        if draw(st.booleans()):
            ref: Json = {
                "fieldRef": draw(
                    field_refs(
                        [
                            "metadata.name",
                            "metadata.namespace",
                            "metadata.labels",
                            "metadata.annotations",
                            "metadata.uid",
                        ]
                    )
                )
            }
        else:
            ref = {"resourceFieldRef": draw(resource_field_refs(volume=True))}
        files.append(_object(draw, {"path": path, **ref, "mode": _maybe(draw, _modes)}))
    return files or None


@st.composite
def _projected(draw: st.DrawFn) -> Json:
    sources = []
    used: set[str] = set()
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        kind = draw(st.sampled_from(["secret", "configMap", "downwardAPI", "serviceAccountToken"]))
        if kind in ("secret", "configMap"):
            items = draw(_key_to_paths())
            body = _object(
                draw,
                {
                    "name": draw(dns_subdomains),
                    "items": items,
                    "optional": _maybe(draw, st.booleans()),
                },
            )
            paths = [item.get("path") for item in items or ()]
        elif kind == "downwardAPI":
            files = draw(_downward_files())
            body = _object(draw, {"items": files})
            paths = [item.get("path") for item in files or ()]
        else:
            path = draw(_local_paths)
            body = _object(
                draw,
                {
                    "audience": _maybe(draw, st.sampled_from(["vault", "https://example.com"])),
                    "expirationSeconds": _maybe(draw, st.integers(min_value=600, max_value=2**32)),
                    "path": path,
                },
            )
            paths = [path]
        if used & set(paths):
            continue
        used |= set(paths)
        sources.append(_object(draw, {kind: body}))
    return _object(draw, {"sources": sources or None, "defaultMode": _maybe(draw, _modes)})


@st.composite
def volume_sources(draw: st.DrawFn) -> Json:
    kind = draw(
        st.sampled_from(
            [
                "emptyDir",
                "secret",
                "configMap",
                "persistentVolumeClaim",
                "projected",
                "downwardAPI",
                "csi",
                "nfs",
            ]
        )
    )
    if kind == "emptyDir":
        body = _object(
            draw,
            {
                "medium": _maybe(draw, st.sampled_from(["", "Memory"])),
                "sizeLimit": _maybe(draw, quantities(_BYTE_SUFFIX)),
            },
        )
    elif kind == "secret":
        body = _object(
            draw,
            {
                "secretName": draw(dns_subdomains),
                "items": draw(_key_to_paths()),
                "defaultMode": _maybe(draw, _modes),
                "optional": _maybe(draw, st.booleans()),
            },
        )
    elif kind == "configMap":
        body = _object(
            draw,
            {
                "name": draw(dns_subdomains),
                "items": draw(_key_to_paths()),
                "defaultMode": _maybe(draw, _modes),
                "optional": _maybe(draw, st.booleans()),
            },
        )
    elif kind == "persistentVolumeClaim":
        body = _object(
            draw, {"claimName": draw(dns_subdomains), "readOnly": _maybe(draw, st.booleans())}
        )
    elif kind == "projected":
        body = draw(_projected())
    elif kind == "downwardAPI":
        body = _object(
            draw, {"items": draw(_downward_files()), "defaultMode": _maybe(draw, _modes)}
        )
    elif kind == "csi":
        body = _object(
            draw,
            {
                "driver": draw(st.sampled_from(["secrets-store.csi.k8s.io", "Example.CSI.io"])),
                "readOnly": _maybe(draw, st.booleans()),
                "fsType": _maybe(draw, st.sampled_from(["ext4", "xfs"])),
                "volumeAttributes": draw(
                    st.dictionaries(_env_names, st.text(max_size=10), max_size=2)
                )
                or None,
                "nodePublishSecretRef": _maybe(
                    draw, dns_subdomains.map(lambda name: {"name": name})
                ),
            },
        )
    else:
        body = _object(
            draw,
            {
                "server": draw(st.sampled_from(["nfs.example.com", "10.0.0.2"])),
                "path": draw(_absolute_paths),
                "readOnly": _maybe(draw, st.booleans()),
            },
        )
    return {kind: body}


@st.composite
def volumes_and_mounts(draw: st.DrawFn) -> tuple[list[Json], list[Json]]:
    names = draw(st.lists(dns_labels, unique=True, max_size=4))
    volumes = [{"name": name, **draw(volume_sources())} for name in names]
    mounts = []
    paths = draw(st.lists(_absolute_paths, unique=True, min_size=len(names), max_size=len(names)))
    for name, path in zip(names, paths, strict=True):
        if not draw(st.booleans()):
            continue
        read_only = _maybe(draw, st.booleans())
        propagation = _maybe(draw, st.sampled_from(["None", "HostToContainer"]))
        recursive = _maybe(draw, st.sampled_from(["Disabled", "IfPossible", "Enabled"]))
        if recursive in ("IfPossible", "Enabled") and (
            read_only is not True or propagation not in (None, "None")
        ):
            recursive = "Disabled"
        sub = draw(st.sampled_from(["subPath", "subPathExpr", None]))
        mounts.append(
            _object(
                draw,
                {
                    "name": name,
                    "mountPath": path,
                    "readOnly": read_only,
                    "subPath": draw(_local_paths) if sub == "subPath" else None,
                    "subPathExpr": "$(POD_NAME)/x" if sub == "subPathExpr" else None,
                    "mountPropagation": propagation,
                    "recursiveReadOnly": recursive,
                },
            )
        )
    return volumes, mounts


# -------------------------------------------------------------------------------- images


@st.composite
def images(draw: st.DrawFn) -> str:
    component = st.from_regex(r"[a-z0-9]+([._-][a-z0-9]+){0,2}", fullmatch=True)
    path = "/".join(draw(st.lists(component, min_size=1, max_size=3)))
    domain = draw(
        st.sampled_from(
            ["", "ghcr.io/", "localhost:5000/", "registry.example.com:443/", "Quay.IO/"]
        )
    )
    tag = _maybe(draw, st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
    digest = _maybe(draw, st.from_regex(r"[a-f0-9]{64}", fullmatch=True))
    return domain + path + (f":{tag}" if tag else "") + (f"@sha256:{digest}" if digest else "")


# ------------------------------------------------------------------------------ the spec


@st.composite
def task_specs(draw: st.DrawFn) -> Json:
    """A task spec document (as a client would send it) that the dispatcher accepts."""
    spec: Json = {"image": draw(images())}
    if draw(st.booleans()):
        spec["name"] = draw(
            st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,30}[A-Za-z0-9])?", fullmatch=True)
        )
    if draw(st.booleans()):
        spec["cmds"] = draw(st.lists(st.text(max_size=10), max_size=3))
    if draw(st.booleans()):
        spec["arguments"] = draw(st.lists(st.text(max_size=10), max_size=3))
    if draw(st.booleans()):
        spec["env_vars"] = draw(env_vars())
    if draw(st.booleans()):
        spec["labels"] = draw(st.dictionaries(label_keys, label_values, max_size=3))
    if draw(st.booleans()):
        annotations = draw(st.dictionaries(label_keys, st.text(max_size=20), max_size=3))
        if draw(st.booleans()):
            annotations["controller.kubernetes.io/pod-deletion-cost"] = str(
                draw(st.integers(min_value=-(2**31), max_value=2**31 - 1))
            )
        spec["annotations"] = annotations
    if draw(st.booleans()):
        spec["container_resources"] = draw(container_resources())
    if draw(st.booleans()):
        spec["image_pull_policy"] = draw(st.sampled_from(["Always", "IfNotPresent", "Never"]))
    if draw(st.booleans()):
        spec["image_pull_secrets"] = draw(st.lists(dns_subdomains, max_size=2))
    if draw(st.booleans()):
        spec["node_selector"] = draw(st.dictionaries(label_keys, label_values, max_size=2))
    if draw(st.booleans()):
        spec["tolerations"] = draw(st.lists(tolerations(), max_size=3))
    if draw(st.booleans()):
        spec["affinity"] = draw(affinities())
    if draw(st.booleans()):
        volumes, mounts = draw(volumes_and_mounts())
        spec["volumes"] = volumes
        spec["volume_mounts"] = mounts
    volumes_text = repr(spec.get("volumes"))
    if draw(st.booleans()) or any(
        k in volumes_text for k in ("serviceAccountToken", "service_account_token")
    ):
        # A projected token is the named service account's.
        spec["service_account_name"] = draw(dns_subdomains)
    if draw(st.booleans()):
        spec["active_deadline_seconds"] = draw(st.integers(min_value=1, max_value=7 * 24 * 3600))
    if draw(st.booleans()):
        spec["termination_message_policy"] = draw(
            st.sampled_from(["File", "FallbackToLogsOnError"])
        )
    return spec


# ----------------------------------------------------------------------- near misses

#: Pieces the API server refuses, each one added to an otherwise accepted spec. A spec
#: carrying one must be refused by the dispatcher too; the dry-run test on the stack sees
#: it if the dispatcher lets one through.
REFUSED_PIECES: list[tuple[str, Any]] = [
    ("tolerations", {"key": "k", "operator": "Equal", "value": "a b"}),
    ("tolerations", {"key": "k", "operator": "exists"}),
    (
        "tolerations",
        {"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 1},
    ),
    (
        "affinity",
        {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]
            }
        },
    ),
    (
        "affinity",
        {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "zone", "matchLabelKeys": ["app"]}
                ]
            }
        },
    ),
    (
        "affinity",
        {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "topologyKey": "zone",
                        "labelSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                    }
                ]
            }
        },
    ),
    (
        "affinity",
        {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "preference": {}}]
            }
        },
    ),
    (
        "affinity",
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "rank", "operator": "Gt", "values": ["-1"]}]}
                    ]
                }
            }
        },
    ),
    (
        "affinity",
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": ["Bad_Node"]}
                            ]
                        }
                    ]
                }
            }
        },
    ),
    ("volumes", {"name": "x-two", "emptyDir": {}, "configMap": {"name": "c"}}),
    ("volumes", {"name": "x-mode", "secret": {"secretName": "s", "defaultMode": 512}}),
    (
        "volumes",
        {"name": "x-path", "configMap": {"name": "c", "items": [{"key": "k", "path": "../k"}]}},
    ),
    ("volumes", {"name": "x-nfs", "nfs": {"server": "nfs", "path": "relative"}}),
    ("volumes", {"name": "x-csi", "csi": {"driver": "bad_driver"}}),
    ("volumes", {"name": "x-size", "emptyDir": {"sizeLimit": "-1Gi"}}),
    (
        "volumes",
        {
            "name": "x-token",
            "projected": {
                "sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 60}}]
            },
        },
    ),
    # A token of no service account (the spec names none; see near_misses).
    (
        "volumes",
        {"name": "x-nosa", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
    ),
    (
        "volumes",
        {
            "name": "x-dup",
            "projected": {
                "sources": [
                    {"configMap": {"name": "c", "items": [{"key": "a", "path": "p"}]}},
                    {"secret": {"name": "s", "items": [{"key": "b", "path": "p"}]}},
                ]
            },
        },
    ),
    (
        "volumes",
        {
            "name": "x-down",
            "downwardAPI": {
                "items": [{"path": "p", "resourceFieldRef": {"resource": "limits.cpu"}}]
            },
        },
    ),
    ("volume_mounts", {"name": "x-mounted", "mountPath": "/x", "subPath": "../up"}),
    ("volume_mounts", {"name": "x-mounted", "mountPath": ""}),
    (
        "volume_mounts",
        {"name": "x-mounted", "mountPath": "/x", "mountPropagation": "Bidirectional"},
    ),
    ("volume_mounts", {"name": "x-mounted", "mountPath": "/x", "recursiveReadOnly": "Enabled"}),
    ("volume_mounts", {"name": "x-mounted", "mountPath": "/x", "subPath": "a", "subPathExpr": "b"}),
    ("env_vars", {"name": "A=B", "value": "x"}),
    ("env_vars", {"name": "X1", "valueFrom": {}}),
    ("env_vars", {"name": "X2", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}),
    ("env_vars", {"name": "X3", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}}),
    (
        "env_vars",
        {
            "name": "X4",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1Mi"}},
        },
    ),
    (
        "env_vars",
        {"name": "X5", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ),
    ("container_resources", {"requests": {"foo": "1"}}),
    (
        "container_resources",
        {"requests": {"hugepages-2Mi": "2Mi"}, "limits": {"hugepages-2Mi": "2Mi"}},
    ),
    (
        "container_resources",
        {"requests": {"cpu": "1", "hugepages-2Mi": "1Mi"}, "limits": {"hugepages-2Mi": "1Mi"}},
    ),
    (
        "container_resources",
        {"requests": {"example.com/fpga": "1"}, "limits": {"example.com/fpga": "2"}},
    ),
    ("annotations", {"controller.kubernetes.io/pod-deletion-cost": "cheap"}),
    ("labels", {"team": "-bad-"}),
]


@st.composite
def near_misses(draw: st.DrawFn) -> Json:
    """An accepted spec with one piece the API server refuses put in."""
    spec = draw(task_specs())
    field, piece = draw(st.sampled_from(REFUSED_PIECES))
    if field in ("tolerations", "env_vars"):
        spec[field] = [*spec.get(field, []), piece]
    elif field == "volumes":
        spec["volumes"] = [*spec.get("volumes", []), piece]
        if piece["name"] == "x-nosa":
            spec.pop("service_account_name", None)
        else:
            spec.setdefault("service_account_name", "runner")
    elif field == "volume_mounts":
        spec["volumes"] = [*spec.get("volumes", []), {"name": "x-mounted", "emptyDir": {}}]
        mounts = [
            m
            for m in spec.get("volume_mounts", [])
            if m.get("mountPath", m.get("mount_path")) != "/x"
        ]
        spec["volume_mounts"] = [*mounts, piece]
    else:
        spec[field] = piece
    return spec


# --------------------------------------------------------------- environment from sources


@st.composite
def env_from_sources(draw: st.DrawFn) -> list[Json]:
    """``env_from`` entries: every key of a ConfigMap or a Secret, perhaps optional."""
    out = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        kind = draw(st.sampled_from(["configMapRef", "secretRef"]))
        ref = _object(draw, {"name": draw(dns_subdomains), "optional": _maybe(draw, st.booleans())})
        out.append(
            _object(
                draw,
                {kind: ref, "prefix": _maybe(draw, st.sampled_from(["DB_", "X"]))},
            )
        )
    return out


@st.composite
def init_containers_with_references(draw: st.DrawFn) -> list[Json]:
    """Init containers whose env and envFrom name Secrets and ConfigMaps."""
    names = draw(st.lists(dns_labels.filter(lambda n: n != "base"), unique=True, max_size=2))
    return [
        {
            "name": name,
            "image": "busybox:1.36",
            "env": draw(env_vars()),
            "env_from": draw(env_from_sources()),
        }
        for name in names
    ]
