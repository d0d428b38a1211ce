"""A task's dependencies: every Secret, ConfigMap, PVC and ServiceAccount its pod names,
with the keys it reads; and routing sends it only where they are, explaining the others."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.core import ClusterState, NodeInfo, PodDefaults, Reason, Verdict, route
from dispatcher.core.dependencies import (
    DependencyKind,
    NamespaceView,
    Reference,
    check,
    dependencies,
)
from dispatcher.core.podspec import Placement, build_pod
from dispatcher.core.snapshot import snapshot_from_document

from .factories import A100, H100, gpu_node, info, snapshot, task
from .spec_strategies import (
    dns_subdomains,
    env_from_sources,
    init_containers_with_references,
    task_specs,
)

SECRET = DependencyKind.SECRET
CONFIG_MAP = DependencyKind.CONFIG_MAP
PVC = DependencyKind.PERSISTENT_VOLUME_CLAIM
SERVICE_ACCOUNT = DependencyKind.SERVICE_ACCOUNT


def _everything_task() -> Any:
    return task(
        image_pull_secrets="regcred",
        service_account_name="runner",
        env_vars=[
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {
                "name": "MODE",
                "value_from": {"config_map_key_ref": {"name": "cfg", "key": "mode"}},
            },
            {
                "name": "EXTRA",
                "valueFrom": {"secretKeyRef": {"name": "extra", "key": "token", "optional": True}},
            },
        ],
        env_from=[{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "env"}}],
        volumes=[
            {"name": "data", "persistentVolumeClaim": {"claimName": "dataset-a"}},
            {
                "name": "tls",
                "secret": {"secretName": "tls", "items": [{"key": "crt", "path": "c"}]},
            },
            {"name": "conf", "configMap": {"name": "app", "optional": True}},
            {
                "name": "both",
                "projected": {
                    "sources": [
                        {"secret": {"name": "p-secret", "items": [{"key": "k", "path": "k"}]}},
                        {"configMap": {"name": "p-cfg"}},
                    ]
                },
            },
            {
                "name": "vault",
                "csi": {
                    "driver": "secrets-store.csi.k8s.io",
                    "nodePublishSecretRef": {"name": "csi-creds"},
                },
            },
        ],
        init_containers=[
            {
                "name": "fetch",
                "image": "busybox:1.36",
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "key"}}}],
                "envFrom": [{"configMapRef": {"name": "init-cfg", "optional": True}}],
            }
        ],
    )


def test_every_kind_of_reference_is_found_with_its_key_and_field() -> None:
    found = {(r.kind, r.name, r.key, r.optional, r.field) for r in dependencies(_everything_task())}
    assert found == {
        (SECRET, "regcred", None, False, "image_pull_secrets[0]"),
        (SERVICE_ACCOUNT, "runner", None, False, "service_account_name"),
        (SECRET, "db", "password", False, "env_vars[0].valueFrom.secretKeyRef"),
        (CONFIG_MAP, "cfg", "mode", False, "env_vars[1].valueFrom.configMapKeyRef"),
        (SECRET, "extra", "token", True, "env_vars[2].valueFrom.secretKeyRef"),
        (CONFIG_MAP, "settings", None, False, "env_from[0].configMapRef"),
        (SECRET, "env", None, False, "env_from[1].secretRef"),
        (PVC, "dataset-a", None, False, "volumes[0].persistentVolumeClaim.claimName"),
        (SECRET, "tls", None, False, "volumes[1].secret"),
        (SECRET, "tls", "crt", False, "volumes[1].secret.items[0].key"),
        (CONFIG_MAP, "app", None, True, "volumes[2].configMap"),
        (SECRET, "p-secret", None, False, "volumes[3].projected.sources[0].secret"),
        (SECRET, "p-secret", "k", False, "volumes[3].projected.sources[0].secret.items[0].key"),
        (CONFIG_MAP, "p-cfg", None, False, "volumes[3].projected.sources[1].configMap"),
        (SECRET, "csi-creds", None, False, "volumes[4].csi.nodePublishSecretRef"),
        (SECRET, "s3", "key", False, "init_containers[0].env[0].valueFrom.secretKeyRef"),
        (CONFIG_MAP, "init-cfg", None, True, "init_containers[0].envFrom[0].configMapRef"),
    }


def test_a_clusters_pod_defaults_add_their_service_account_and_pull_secrets() -> None:
    defaults = PodDefaults(service_account_name="batch-runner", image_pull_secrets=("mirror",))
    found = {(r.kind, r.name, r.field) for r in dependencies(task(), defaults)}
    assert found == {
        (SERVICE_ACCOUNT, "batch-runner", "pod_defaults.service_account_name"),
        (SECRET, "mirror", "pod_defaults.image_pull_secrets[0]"),
    }
    # The task's own account wins, as on the pod.
    named = dependencies(task(service_account_name="mine"), defaults)
    assert [r.name for r in named if r.kind is SERVICE_ACCOUNT] == ["mine"]


def test_a_task_naming_nothing_depends_on_nothing() -> None:
    assert dependencies(task()) == ()


def test_the_default_service_account_is_no_dependency() -> None:
    # Kubernetes keeps it in every namespace (the stack, without a controller manager,
    # has none: a pod template naming it must still route).
    assert dependencies(task(service_account_name="default")) == ()
    assert dependencies(task(), PodDefaults(service_account_name="default")) == ()


# ---------------------------------------------------------------- the pod as the oracle


def _pod_references(pod: dict[str, Any]) -> set[tuple[DependencyKind, str, str | None]]:
    """What the built pod names, read from the manifest the kubelet gets."""
    spec = pod["spec"]
    out: set[tuple[DependencyKind, str, str | None]] = set()
    out.update((SECRET, s["name"], None) for s in spec.get("imagePullSecrets", ()))
    if spec.get("serviceAccountName", "default") != "default":
        out.add((SERVICE_ACCOUNT, spec["serviceAccountName"], None))
    for container in [*spec["containers"], *spec.get("initContainers", ())]:
        for variable in container.get("env", ()):
            source = variable.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                out.add((SECRET, ref["name"], ref["key"]))
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                out.add((CONFIG_MAP, ref["name"], ref["key"]))
        for source in container.get("envFrom", ()):
            if "secretRef" in source:
                out.add((SECRET, source["secretRef"]["name"], None))
            if "configMapRef" in source:
                out.add((CONFIG_MAP, source["configMapRef"]["name"], None))
    for volume in spec.get("volumes", ()):
        keyed = []
        if "secret" in volume:
            keyed.append((SECRET, volume["secret"]["secretName"], volume["secret"]))
        if "configMap" in volume:
            keyed.append((CONFIG_MAP, volume["configMap"]["name"], volume["configMap"]))
        for source in (volume.get("projected") or {}).get("sources", ()):
            if "secret" in source:
                keyed.append((SECRET, source["secret"]["name"], source["secret"]))
            if "configMap" in source:
                keyed.append((CONFIG_MAP, source["configMap"]["name"], source["configMap"]))
        for kind, name, body in keyed:
            out.add((kind, name, None))
            out.update((kind, name, item["key"]) for item in body.get("items", ()))
        if "persistentVolumeClaim" in volume:
            out.add((PVC, volume["persistentVolumeClaim"]["claimName"], None))
        ref = (volume.get("csi") or {}).get("nodePublishSecretRef")
        if ref:
            out.add((SECRET, ref["name"], None))
    return out


@st.composite
def _specs_with_every_reference(draw: st.DrawFn) -> dict[str, Any]:
    spec = draw(task_specs())
    spec["env_from"] = draw(env_from_sources())
    spec["init_containers"] = draw(init_containers_with_references())
    return spec


_defaults = st.builds(
    PodDefaults,
    service_account_name=st.one_of(st.none(), dns_subdomains),
    image_pull_secrets=st.lists(dns_subdomains, max_size=2, unique=True).map(tuple),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_specs_with_every_reference(), defaults=_defaults)
def test_dependencies_are_exactly_what_the_built_pod_names(
    document: dict[str, Any], defaults: PodDefaults
) -> None:
    from dispatcher.core import parse_task_spec

    spec = parse_task_spec(document)
    pod = build_pod(
        spec,
        Placement(cluster="c", defaults=defaults),
        job_id="j",
        attempt=0,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    found = {(r.kind, r.name, r.key) for r in dependencies(spec, defaults)}
    assert found == _pod_references(pod)


# ----------------------------------------------------------------------------- check


def _view(**objects: dict[str, frozenset[str]]) -> NamespaceView:
    kinds = {
        "secrets": SECRET,
        "configmaps": CONFIG_MAP,
        "pvcs": PVC,
        "serviceaccounts": SERVICE_ACCOUNT,
    }
    return NamespaceView(objects={kinds[k]: v for k, v in objects.items()})


def _full_view(references: tuple[Reference, ...]) -> NamespaceView:
    objects: dict[DependencyKind, dict[str, set[str]]] = {kind: {} for kind in DependencyKind}
    for r in references:
        keys = objects[r.kind].setdefault(r.name, set())
        if r.key is not None:
            keys.add(r.key)
    return NamespaceView(
        objects={k: {n: frozenset(v) for n, v in names.items()} for k, names in objects.items()}
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_specs_with_every_reference(), data=st.data())
def test_a_cluster_lacking_a_required_object_or_key_is_told_which_and_optional_ones_never(
    document: dict[str, Any], data: st.DataObject
) -> None:
    from dispatcher.core import parse_task_spec

    references = dependencies(parse_task_spec(document))
    full = _full_view(references)
    assert check(references, "batch", full).missing == ()
    if not references:
        return
    dropped = data.draw(st.sampled_from(references))
    objects = {kind: dict(names) for kind, names in full.objects.items()}
    if dropped.key is None:
        del objects[dropped.kind][dropped.name]
    else:
        objects[dropped.kind][dropped.name] = objects[dropped.kind][dropped.name] - {dropped.key}
    report = check(references, "batch", NamespaceView(objects=objects))
    needed = [
        r
        for r in references
        if not r.optional
        and r.kind is dropped.kind
        and r.name == dropped.name
        and (dropped.key is None or r.key == dropped.key)
    ]
    if not needed:
        assert report.missing == ()
        return
    words = [why for _, why in report.missing]
    if dropped.key is None:
        assert words == [f"{dropped.kind.value} {dropped.name} not in namespace batch"]
    else:
        assert words == [f"{dropped.kind.value} {dropped.name} has no key {dropped.key}"]


def test_unlisted_kinds_are_unknown_not_missing() -> None:
    references = dependencies(task(image_pull_secrets="regcred"))
    report = check(references, "batch", NamespaceView(unknown={SECRET: "not listed yet"}))
    assert report.missing == ()
    assert [why for _, why in report.unknown] == ["Secrets in batch: not listed yet"]


# --------------------------------------------------------------------------- routing


def _gpu_cluster(
    name: str, model: str, view: NamespaceView | None, **defaults: Any
) -> ClusterState:
    defaults.setdefault("namespace", "batch")
    return ClusterState.build(
        info(name, gpu_prices={model: 1.0}, **defaults),
        nodes=[NodeInfo.from_k8s(gpu_node(f"{name}-0", model=model))],
        objects=None if view is None else {"batch": view},
    )


GPU = {"limits": {"nvidia.com/gpu": "1"}}
PVC_TASK = {
    "container_resources": GPU,
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "dataset-a"}}],
    "volume_mounts": [{"name": "data", "mountPath": "/data"}],
}


def test_a_pvc_pins_the_task_to_the_cluster_that_has_it_and_the_others_say_so() -> None:
    decision = route(
        task(**PVC_TASK),
        snapshot(
            _gpu_cluster("gpu-a100", A100, _view(pvcs={})),
            _gpu_cluster("gpu-h100", H100, _view(pvcs={"dataset-a": frozenset()})),
        ),
    )
    assert (decision.verdict, decision.cluster) == (Verdict.PLACE, "gpu-h100")
    other = decision.explain("gpu-a100")
    assert other is not None
    assert (other.verdict, other.reason) == (Verdict.REJECT, Reason.DEPENDENCY_MISSING)
    assert other.message == ("PersistentVolumeClaim dataset-a not in namespace batch")
    explained = {c["cluster"]: c["dependencies"] for c in decision.to_dict()["clusters"]}
    assert [m["name"] for m in explained["gpu-a100"]["missing"]] == ["dataset-a"]
    assert [p["name"] for p in explained["gpu-h100"]["present"]] == ["dataset-a"]
    assert explained["gpu-h100"]["namespace"] == "batch"


def test_a_missing_key_everywhere_rejects_the_task_naming_the_secret_and_key() -> None:
    spec = task(
        container_resources=GPU,
        env_vars=[{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
    )
    view = _view(secrets={"db": frozenset({"user"})})
    decision = route(
        spec,
        snapshot(_gpu_cluster("gpu-a100", A100, view), _gpu_cluster("gpu-h100", H100, view)),
    )
    assert decision.verdict is Verdict.REJECT
    assert "gpu-a100: Secret db has no key password" in decision.message()
    assert "gpu-h100: Secret db has no key password" in decision.message()


def test_optional_references_to_missing_objects_do_not_refuse_a_cluster() -> None:
    spec = task(
        container_resources=GPU, env_from=[{"secretRef": {"name": "maybe", "optional": True}}]
    )
    decision = route(spec, snapshot(_gpu_cluster("gpu-a100", A100, _view(secrets={}))))
    assert decision.verdict is Verdict.PLACE


def test_a_cluster_with_the_check_off_is_not_refused_and_explains_nothing() -> None:
    spec = task(**PVC_TASK)
    state = ClusterState.build(
        dataclasses.replace(info("gpu-a100", namespace="batch"), check_dependencies=False),
        nodes=[NodeInfo.from_k8s(gpu_node("a-0"))],
        objects={"batch": _view(pvcs={})},
    )
    decision = route(spec, snapshot(state))
    assert decision.verdict is Verdict.PLACE
    assert decision.clusters[0].dependencies is None


def test_a_cluster_whose_view_is_not_listed_yet_waits_rather_than_refuses() -> None:
    spec = task(**PVC_TASK)
    unknown = NamespaceView(unknown={PVC: "not listed yet"})
    decision = route(spec, snapshot(_gpu_cluster("gpu-a100", A100, unknown)))
    assert decision.verdict is Verdict.WAIT
    verdict = decision.explain("gpu-a100")
    assert verdict is not None
    assert verdict.reason is Reason.DEPENDENCIES_UNKNOWN
    assert "PersistentVolumeClaims in batch: not listed yet" in verdict.message


def test_the_check_looks_in_the_namespace_the_pod_goes_to() -> None:
    # The task's own namespace, where the cluster allows it: the PVC must be there.
    spec = task(namespace="team-a", **PVC_TASK)
    state = ClusterState.build(
        info("gpu-a100", namespace="batch", allowed_namespaces=["team-a"]),
        nodes=[NodeInfo.from_k8s(gpu_node("a-0"))],
        objects={"batch": _view(pvcs={"dataset-a": frozenset()}), "team-a": _view(pvcs={})},
    )
    verdict = route(spec, snapshot(state)).explain("gpu-a100")
    assert verdict is not None
    assert verdict.message.startswith("PersistentVolumeClaim dataset-a not in namespace team-a")


def test_a_snapshot_document_can_say_which_objects_a_cluster_holds() -> None:
    document = {
        "clusters": [
            {
                "name": "gpu-h100",
                "pod_defaults": {
                    "namespace": "batch",
                    "gpu_tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
                "nodes": [gpu_node("h", model=H100)],
                "objects": {"batch": {"persistentvolumeclaims": ["dataset-a"]}},
            }
        ]
    }
    decision = route(task(**PVC_TASK), snapshot_from_document(document))
    assert decision.cluster == "gpu-h100"
