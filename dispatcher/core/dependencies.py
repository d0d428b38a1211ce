"""The namespaced objects a task's pod needs, and whether a cluster has them; pure, no I/O.

``dependencies(task, defaults)`` reads the pod the dispatcher will build (the task's own
fields, its init containers, and what a cluster's ``PodDefaults`` add) and names every
object of the pod's namespace the kubelet will look up:

- Secrets: ``image_pull_secrets``, env ``valueFrom.secretKeyRef`` (a key), ``env_from``
  ``secretRef``, ``secret`` volumes (their ``items`` keys), projected ``secret`` sources,
  a CSI volume's ``nodePublishSecretRef``;
- ConfigMaps: ``configMapKeyRef`` (a key), ``env_from`` ``configMapRef``, ``configMap``
  volumes and projected sources (their ``items`` keys);
- PersistentVolumeClaims: ``persistentVolumeClaim`` volumes;
- the ServiceAccount, when the task or the cluster names one other than ``default``
  (which Kubernetes itself keeps in every namespace, as it is used when none is named).

Each ``Reference`` says where in the spec it comes from and whether it is ``optional``:
the kubelet starts a pod whose optional object (or optional key) is missing, so a missing
optional reference is no problem. Image pull secrets are required here although a kubelet
only warns about a missing one: the image then pulls without credentials, which is what
the DAG author named the Secret to avoid.

``check(deps, namespace, view)`` judges them against a ``NamespaceView`` (what a cluster's
informers saw: names, and the key names of Secrets and ConfigMaps, never values).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dispatcher.core.spec import EnvVar, PodDefaults, TaskSpec

__all__ = [
    "DependencyKind",
    "DependencyReport",
    "NamespaceView",
    "Reference",
    "check",
    "dependencies",
]


#: Kept in every namespace by Kubernetes' ServiceAccount controller: never a dependency.
DEFAULT_SERVICE_ACCOUNT = "default"


class DependencyKind(StrEnum):
    """Kinds of namespaced objects a pod may need; values are the API's kind names."""

    SECRET = "Secret"  # noqa: S105 - a kind name
    CONFIG_MAP = "ConfigMap"
    PERSISTENT_VOLUME_CLAIM = "PersistentVolumeClaim"
    SERVICE_ACCOUNT = "ServiceAccount"

    @property
    def has_keys(self) -> bool:
        return self in (DependencyKind.SECRET, DependencyKind.CONFIG_MAP)


@dataclass(frozen=True, slots=True)
class Reference:
    """One place the pod names an object: the object, the key it reads (``None``: the
    whole object), whether the reference is optional, and the spec's field path."""

    kind: DependencyKind
    name: str
    key: str | None = None
    optional: bool = False
    field: str = ""

    def describe(self) -> str:
        what = f"{self.kind.value} {self.name}"
        return f"{what} key {self.key}" if self.key is not None else what


def _env_references(env: Iterable[EnvVar], where: str) -> Iterator[Reference]:
    for index, variable in enumerate(env):
        source = variable.value_from or {}
        for field_name, kind in (
            ("secretKeyRef", DependencyKind.SECRET),
            ("configMapKeyRef", DependencyKind.CONFIG_MAP),
        ):
            ref = source.get(field_name)
            if isinstance(ref, Mapping):
                yield Reference(
                    kind,
                    str(ref["name"]),
                    str(ref["key"]),
                    bool(ref.get("optional")),
                    f"{where}[{index}].valueFrom.{field_name}",
                )


def _env_from_references(sources: Iterable[Mapping[str, Any]], where: str) -> Iterator[Reference]:
    for index, source in enumerate(sources):
        for field_name, kind in (
            ("secretRef", DependencyKind.SECRET),
            ("configMapRef", DependencyKind.CONFIG_MAP),
        ):
            ref = source.get(field_name)
            if isinstance(ref, Mapping):
                yield Reference(
                    kind,
                    str(ref["name"]),
                    None,
                    bool(ref.get("optional")),
                    f"{where}[{index}].{field_name}",
                )


def _keyed(
    kind: DependencyKind, name: str, source: Mapping[str, Any], where: str
) -> Iterator[Reference]:
    """A Secret or ConfigMap volume (or projection): the object, and each ``items`` key."""
    optional = bool(source.get("optional"))
    yield Reference(kind, name, None, optional, where)
    for number, item in enumerate(source.get("items") or ()):
        yield Reference(kind, name, str(item["key"]), optional, f"{where}.items[{number}].key")


def _volume_references(volumes: Iterable[Mapping[str, Any]]) -> Iterator[Reference]:
    for index, volume in enumerate(volumes):
        where = f"volumes[{index}]"
        if isinstance(secret := volume.get("secret"), Mapping):
            yield from _keyed(
                DependencyKind.SECRET, str(secret["secretName"]), secret, f"{where}.secret"
            )
        if isinstance(config_map := volume.get("configMap"), Mapping):
            yield from _keyed(
                DependencyKind.CONFIG_MAP,
                str(config_map["name"]),
                config_map,
                f"{where}.configMap",
            )
        if isinstance(claim := volume.get("persistentVolumeClaim"), Mapping):
            yield Reference(
                DependencyKind.PERSISTENT_VOLUME_CLAIM,
                str(claim["claimName"]),
                field=f"{where}.persistentVolumeClaim.claimName",
            )
        if isinstance(csi := volume.get("csi"), Mapping) and isinstance(
            ref := csi.get("nodePublishSecretRef"), Mapping
        ):
            yield Reference(
                DependencyKind.SECRET, str(ref["name"]), field=f"{where}.csi.nodePublishSecretRef"
            )
        projected = volume.get("projected")
        if isinstance(projected, Mapping):
            for number, source in enumerate(projected.get("sources") or ()):
                at = f"{where}.projected.sources[{number}]"
                if isinstance(secret := source.get("secret"), Mapping):
                    yield from _keyed(
                        DependencyKind.SECRET, str(secret["name"]), secret, f"{at}.secret"
                    )
                if isinstance(config_map := source.get("configMap"), Mapping):
                    yield from _keyed(
                        DependencyKind.CONFIG_MAP,
                        str(config_map["name"]),
                        config_map,
                        f"{at}.configMap",
                    )


def dependencies(task: TaskSpec, defaults: PodDefaults | None = None) -> tuple[Reference, ...]:
    """Every reference the pod built for ``task`` (with a cluster's ``defaults``) makes to
    an object of its namespace, sorted, without duplicates."""
    defaults = defaults or PodDefaults()
    references: list[Reference] = []
    references.extend(
        Reference(DependencyKind.SECRET, name, field=f"image_pull_secrets[{index}]")
        for index, name in enumerate(task.image_pull_secrets)
    )
    references.extend(
        Reference(DependencyKind.SECRET, name, field=f"pod_defaults.image_pull_secrets[{index}]")
        for index, name in enumerate(defaults.image_pull_secrets)
        if name not in task.image_pull_secrets
    )
    references.extend(_env_references(task.env_vars, "env_vars"))
    references.extend(_env_from_references(task.env_from, "env_from"))
    for index, container in enumerate(task.init_containers):
        where = f"init_containers[{index}]"
        references.extend(_env_references(container.env, f"{where}.env"))
        references.extend(_env_from_references(container.env_from, f"{where}.envFrom"))
    references.extend(_volume_references(task.volumes))
    if task.service_account_name == DEFAULT_SERVICE_ACCOUNT:
        pass
    elif task.service_account_name is not None:
        references.append(
            Reference(
                DependencyKind.SERVICE_ACCOUNT,
                task.service_account_name,
                field="service_account_name",
            )
        )
    elif defaults.service_account_name not in (None, DEFAULT_SERVICE_ACCOUNT):
        references.append(
            Reference(
                DependencyKind.SERVICE_ACCOUNT,
                defaults.service_account_name,
                field="pod_defaults.service_account_name",
            )
        )
    return tuple(sorted(set(references), key=_order))


def _order(reference: Reference) -> tuple[str, str, str, bool, str]:
    r = reference
    return (r.kind, r.name, r.key or "", r.optional, r.field)


@dataclass(frozen=True, slots=True)
class NamespaceView:
    """What one cluster holds in one namespace, as its informers saw it: per kind, the
    object names, and for Secrets and ConfigMaps their key names (never their values).

    A kind missing from ``objects`` was not listed (yet, or not permitted): nothing can be
    said about its objects, and ``unknown`` says why.
    """

    #: kind -> object name -> its key names (empty for kinds without keys).
    objects: Mapping[DependencyKind, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    #: kind -> why it is not known (``"not listed yet"``, ``"forbidden: ..."``).
    unknown: Mapping[DependencyKind, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DependencyReport:
    """How a cluster stands for a task's dependencies, for routing and its explanation."""

    namespace: str
    #: References the cluster satisfies, optional ones whose object is missing included.
    present: tuple[Reference, ...] = ()
    #: Required references the cluster lacks, each with the words that say so.
    missing: tuple[tuple[Reference, str], ...] = ()
    #: Required references the view cannot judge (its kind not listed), with why.
    unknown: tuple[tuple[Reference, str], ...] = ()
    #: Missing references the cluster's copy policy brings there before the pod, with
    #: where from (``dispatcher.core.copies.resolve``).
    would_copy: tuple[tuple[Reference, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "present": [_ref_dict(r) for r in self.present],
            "missing": [{**_ref_dict(r), "message": why} for r, why in self.missing],
            "unknown": [{**_ref_dict(r), "message": why} for r, why in self.unknown],
            "would_copy": [{**_ref_dict(r), "message": why} for r, why in self.would_copy],
        }


def _ref_dict(reference: Reference) -> dict[str, Any]:
    return {
        "kind": reference.kind.value,
        "name": reference.name,
        "key": reference.key,
        "optional": reference.optional,
        "field": reference.field,
    }


def check(references: Iterable[Reference], namespace: str, view: NamespaceView) -> DependencyReport:
    """Judge ``references`` against what a cluster holds in ``namespace``."""
    present: list[Reference] = []
    missing: list[tuple[Reference, str]] = []
    unknown: list[tuple[Reference, str]] = []
    said: set[str] = set()
    for reference in references:
        objects = view.objects.get(reference.kind)
        if objects is None:
            if not reference.optional:
                why = view.unknown.get(reference.kind, "not listed")
                unknown.append((reference, f"{reference.kind.value}s in {namespace}: {why}"))
            else:
                present.append(reference)
            continue
        keys = objects.get(reference.name)
        if reference.optional:
            present.append(reference)
        elif keys is None:
            why = f"{reference.kind.value} {reference.name} not in namespace {namespace}"
            if why not in said:
                said.add(why)
                missing.append((reference, why))
        elif reference.key is not None and reference.key not in keys:
            why = f"{reference.kind.value} {reference.name} has no key {reference.key}"
            if why not in said:
                said.add(why)
                missing.append((reference, why))
        else:
            present.append(reference)
    return DependencyReport(namespace, tuple(present), tuple(missing), tuple(unknown))
