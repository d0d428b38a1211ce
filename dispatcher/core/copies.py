"""Which of a task's dependencies the dispatcher may bring to a cluster, and the copies'
shape; pure, no I/O.

A cluster's ``CopyPolicy`` names what may be *materialised* there (issue 15, items 3 and 4):

- Secrets and ConfigMaps copied from the in-plane cluster's task namespace (the source the
  DAG author already maintains), chosen by name patterns (``fnmatch``: ``"*"``, ``"db-*"``);
- Secrets and ConfigMaps filled from Vault KV v2 (each key from a field of one entry);
- registry pull Secrets: a ``dockerconfigjson`` kept in Vault KV for an image registry; a
  task whose image comes from that registry gets the Secret in its ``imagePullSecrets``
  without naming one.

PersistentVolumeClaims are never copied (their data stays where it is: a PVC pins a task),
nor ServiceAccounts (a token of one cluster means nothing in another).

``resolve(report, references, policy, ...)`` turns a ``DependencyReport``'s missing
references into ``would_copy`` ones where the policy and the source allow it. The copy's
manifest (``copy_manifest``) carries the label ``COPY_LABEL`` and, in annotations, where it
came from, the source's version (a resourceVersion or KV versions, never a digest of the
values) and the ids of the jobs using it (``users``/``with_users``): the dispatcher deletes
a copy when its last user has ended, and after a restart finds every copy by the label.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dispatcher.core.dependencies import (
    DependencyKind,
    DependencyReport,
    NamespaceView,
    Reference,
)
from dispatcher.core.names import sanitize_dns_label

__all__ = [
    "COPY_LABEL",
    "SOURCE_ANNOTATION",
    "SOURCE_VERSION_ANNOTATION",
    "USED_BY_ANNOTATION",
    "CopyPolicy",
    "Registry",
    "Source",
    "VaultObject",
    "copies_selector",
    "copy_manifest",
    "image_registry",
    "is_copy",
    "registries_for",
    "resolve",
    "source_version",
    "users",
    "with_users",
]

#: On every object the dispatcher materialised in a cluster (value ``"true"``).
COPY_LABEL = "kube-dispatcher.dev/copy"
#: Where the copy came from: ``<cluster>/<namespace>/<name>`` or ``vault:<mount>/<path>``.
SOURCE_ANNOTATION = "kube-dispatcher.dev/copy-source"
#: The source's version the copy holds (its resourceVersion, or the KV versions).
SOURCE_VERSION_ANNOTATION = "kube-dispatcher.dev/copy-source-version"
#: Comma-separated ids of the jobs whose pods use the copy.
USED_BY_ANNOTATION = "kube-dispatcher.dev/used-by"

_COPYABLE = (DependencyKind.SECRET, DependencyKind.CONFIG_MAP)
DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
_DOCKER_HUB = "docker.io"


@dataclass(frozen=True, slots=True)
class VaultObject:
    """A Secret or ConfigMap whose keys are fields of one Vault KV v2 entry."""

    kind: DependencyKind
    name: str
    mount: str
    path: str
    #: The entry's fields that become the object's keys.
    keys: tuple[str, ...]
    #: The Secret's ``type`` (ignored for ConfigMaps).
    secret_type: str = "Opaque"  # noqa: S105 - a Secret type, not a password

    def origin(self) -> str:
        return f"vault:{self.where()}"

    def where(self) -> str:
        return f"{self.mount}/{self.path}"


@dataclass(frozen=True, slots=True)
class Registry:
    """An image registry whose pull credentials (a ``.dockerconfigjson``) live in Vault."""

    #: ``host[:port]``, optionally with a path prefix: ``ghcr.io``, ``ghcr.io/acme``.
    server: str
    mount: str
    path: str
    field: str = ".dockerconfigjson"

    @property
    def secret_name(self) -> str:
        """The pull Secret's name in the target cluster: readable, unique per server."""
        digest = hashlib.sha256(self.server.encode()).hexdigest()[:8]
        base = sanitize_dns_label(self.server, max_length=40) or "registry"
        return f"kd-registry-{base}-{digest}"

    def matches(self, image: str) -> bool:
        reference = _full_reference(image)
        server = self.server.rstrip("/")
        return reference == server or reference.startswith(server + "/")

    def as_object(self) -> VaultObject:
        return VaultObject(
            DependencyKind.SECRET,
            self.secret_name,
            self.mount,
            self.path,
            (self.field,),
            DOCKER_CONFIG_JSON,
        )


def image_registry(image: str) -> str:
    """The registry host of an image reference (``docker.io`` when it names none)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return _DOCKER_HUB


def _full_reference(image: str) -> str:
    """``host/path`` of an image, without tag or digest (Docker Hub's defaults filled in)."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name = name[:colon]
    host = image_registry(name)
    if host == _DOCKER_HUB and not name.startswith(_DOCKER_HUB + "/"):
        path = name if "/" in name else f"library/{name}"
        return f"{_DOCKER_HUB}/{path}"
    return name


@dataclass(frozen=True, slots=True)
class CopyPolicy:
    """What the dispatcher may materialise in one cluster (nothing by default)."""

    #: Name patterns of Secrets and ConfigMaps copied from the in-plane task namespace.
    from_plane: Mapping[DependencyKind, tuple[str, ...]] = field(default_factory=dict)
    #: Secrets and ConfigMaps filled from Vault KV (they win over ``from_plane``).
    from_vault: tuple[VaultObject, ...] = ()
    registries: tuple[Registry, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(any(self.from_plane.values()) or self.from_vault or self.registries)

    def vault_object(self, kind: DependencyKind, name: str) -> VaultObject | None:
        for item in (*self.from_vault, *(r.as_object() for r in self.registries)):
            if item.kind is kind and item.name == name:
                return item
        return None

    def copies_from_plane(self, kind: DependencyKind, name: str) -> bool:
        if kind not in _COPYABLE:
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in self.from_plane.get(kind, ()))

    def may_copy(self, kind: DependencyKind, name: str) -> bool:
        return self.vault_object(kind, name) is not None or self.copies_from_plane(kind, name)


def registries_for(images: Iterable[str], policy: CopyPolicy) -> tuple[Registry, ...]:
    """The policy's registries any of ``images`` comes from, in the policy's order."""
    wanted = tuple(images)
    return tuple(r for r in policy.registries if any(r.matches(i) for i in wanted))


@dataclass(frozen=True, slots=True)
class Source:
    """Where copies for a cluster come from: the in-plane cluster's task namespace."""

    cluster: str
    namespace: str
    #: What the in-plane cluster's informers saw there; ``None``: not watched.
    view: NamespaceView | None


def resolve(
    report: DependencyReport,
    policy: CopyPolicy,
    source: Source | None,
) -> DependencyReport:
    """``report`` with each missing reference the policy can bring moved to
    ``would_copy`` (with where from), or its message saying why it cannot be copied."""
    if not policy.enabled:
        return report
    missing: list[tuple[Reference, str]] = []
    unknown = list(report.unknown)
    would_copy = list(report.would_copy)
    for reference, why in report.missing:
        kind, name = reference.kind, reference.name
        vault = policy.vault_object(kind, name)
        if vault is not None:
            if reference.key is None or reference.key in vault.keys:
                would_copy.append((reference, f"would be copied from Vault KV {vault.where()}"))
            else:
                missing.append(
                    (reference, f"{why}, nor a key of its Vault KV source {vault.where()}")
                )
            continue
        if not policy.copies_from_plane(kind, name):
            missing.append((reference, why))
            continue
        if source is None:
            missing.append((reference, f"{why} (no in-plane cluster to copy it from)"))
            continue
        where = f"{source.cluster} namespace {source.namespace}"
        objects = None if source.view is None else source.view.objects.get(kind)
        if objects is None:
            unknown.append((reference, f"{why}; whether {where} has it to copy is not known yet"))
            continue
        keys = objects.get(name)
        if keys is None:
            missing.append((reference, f"{why}, nor in {where} to copy it from"))
        elif reference.key is not None and reference.key not in keys:
            missing.append(
                (reference, f"{why}, and its copy source in {where} has no key {reference.key}")
            )
        else:
            would_copy.append((reference, f"would be copied from {where}"))
    return replace(
        report, missing=tuple(missing), unknown=tuple(unknown), would_copy=tuple(would_copy)
    )


# ----------------------------------------------------------------------------- copies


def copies_selector() -> str:
    """The label selector that lists every copy the dispatcher made."""
    return f"{COPY_LABEL}=true"


def is_copy(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(COPY_LABEL) == "true"


def users(obj: Mapping[str, Any]) -> frozenset[str]:
    """The job ids a copy says use it."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(USED_BY_ANNOTATION) or ""
    return frozenset(u for u in raw.split(",") if u)


def source_version(obj: Mapping[str, Any]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(SOURCE_VERSION_ANNOTATION)
    return value if isinstance(value, str) else None


def with_users(obj: Mapping[str, Any], job_ids: Iterable[str]) -> dict[str, Any]:
    """``obj`` (a copy as read, resourceVersion kept) with its users replaced."""
    metadata = dict(obj.get("metadata") or {})
    annotations = dict(metadata.get("annotations") or {})
    annotations[USED_BY_ANNOTATION] = ",".join(sorted(set(job_ids)))
    metadata["annotations"] = annotations
    return {**obj, "metadata": metadata}


def copy_manifest(
    kind: DependencyKind,
    name: str,
    namespace: str,
    *,
    content: Mapping[str, Any],
    origin: str,
    version: str,
    job_ids: Iterable[str],
    resource_version: str | None = None,
) -> dict[str, Any]:
    """The copy as it is created (or replaced, with ``resource_version``).

    ``content`` holds the source's value fields (``data``, ``binaryData``, ``stringData``,
    ``type``, ``immutable``); nothing else of the source is carried over: its labels and
    annotations may hold values (``last-applied-configuration``) or mean something only
    where it lives.
    """
    if kind not in _COPYABLE:
        raise ValueError(f"{kind.value}s are never copied")
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {COPY_LABEL: "true"},
        "annotations": {
            SOURCE_ANNOTATION: origin,
            SOURCE_VERSION_ANNOTATION: version,
            USED_BY_ANNOTATION: ",".join(sorted(set(job_ids))),
        },
    }
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    fields: tuple[str, ...] = ("data", "binaryData", "stringData", "type")
    if kind is DependencyKind.CONFIG_MAP:
        fields = ("data", "binaryData")
    body: dict[str, Any] = {"apiVersion": "v1", "kind": kind.value, "metadata": metadata}
    body.update({f: content[f] for f in fields if content.get(f) is not None})
    return body
