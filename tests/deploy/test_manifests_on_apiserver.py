"""The rendered chart and the external-cluster RBAC, sent to the test stack's real
kube-apiservers: server-side dry-run (schema, defaulting, admission), the restricted Pod
Security Standard, and what the RBAC really lets the dispatcher's identities do.

Server-side apply through the kubernetes client is what `kubectl apply --server-side
--dry-run=server` does, without needing kubectl. The names used (namespaces kd-deploy,
batch, batch-priority; objects prefixed kd-) are fixed, so reruns on a kept stack reapply
the same objects instead of piling up namespaces (the stack has no namespace controller).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from tests.stack import Stack

from .support import (
    CHART,
    CRDS_DIR,
    DEPLOY,
    MONITORING_API,
    RECORDS_CRD,
    RELEASE_NAMESPACE,
    VALUES_DIR,
    helm_template,
    one,
    run,
)

FIELD_MANAGER = "kube-dispatcher-deploy-tests"
TASK_NAMESPACES = ("batch", "batch-priority")
RENDERS = {
    "defaults": [],
    "options": [VALUES_DIR / "options.yaml"],
}


class Cluster:
    """Server-side apply and access reviews against one stack cluster."""

    def __init__(self, api: client.ApiClient, cache: Path) -> None:
        self.api = api
        self.dynamic = DynamicClient(api, cache_file=str(cache))

    def apply(self, obj: dict[str, Any], *, dry_run: bool) -> None:
        refusal = self.refusal(obj, dry_run=dry_run)
        if refusal:
            meta = obj["metadata"]
            pytest.fail(
                f"the API server refused {obj['kind']} {meta.get('namespace', '')}/"
                f"{meta['name']}: {refusal}",
                pytrace=False,
            )

    def refusal(self, obj: dict[str, Any], *, dry_run: bool) -> str | None:
        """Server-side apply ``obj``; the API server's reason if it refuses, else None."""
        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        try:
            self.dynamic.server_side_apply(
                resource,
                body=obj,
                name=meta["name"],
                namespace=meta.get("namespace") if resource.namespaced else None,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                dry_run="All" if dry_run else None,
            )
        except DynamicApiError as exc:
            return str(exc.summary())
        return None

    def ensure_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}},
        }
        self.apply(body, dry_run=False)

    def can(
        self,
        user: str,
        verb: str,
        resource: str,
        *,
        namespace: str = "",
        group: str = "",
        subresource: str = "",
        name: str = "",
    ) -> bool:
        _, _, sa_namespace, _ = user.split(":")
        review = client.AuthorizationV1Api(self.api).create_subject_access_review(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{sa_namespace}",
                        "system:authenticated",
                    ],
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": verb,
                        "group": group,
                        "resource": resource,
                        "subresource": subresource,
                        "name": name,
                    },
                },
            }
        )
        return bool(review.status.allowed)


@pytest.fixture(scope="module")
def plane(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with stack.kube("plane") as api:
        cluster = Cluster(api, tmp_path_factory.mktemp("discovery") / "plane.json")
        # The release namespace enforces the restricted Pod Security Standard, so a pod
        # of the chart that is not locked down is refused.
        cluster.ensure_namespace(
            RELEASE_NAMESPACE,
            {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        )
        for namespace in TASK_NAMESPACES:
            cluster.ensure_namespace(namespace)
        _install_crds(cluster)
        yield cluster


def _install_crds(cluster: Cluster) -> None:
    extensions = client.ApiextensionsV1Api(cluster.api)
    names = []
    # The Prometheus Operator's (the chart renders objects of theirs) and the chart's own.
    for path in [*sorted(CRDS_DIR.glob("*.yaml")), RECORDS_CRD]:
        crd = yaml.safe_load(path.read_text())
        cluster.apply(crd, dry_run=False)
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + 30
    for name in names:
        while True:
            conditions = extensions.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"CRD {name} not established after 30s"
            time.sleep(0.2)
    cluster.dynamic.resources.invalidate_cache()


@pytest.fixture(scope="module")
def renders(helm: str) -> dict[str, list[dict[str, Any]]]:
    return {
        name: helm_template(helm, values=values, api_versions=[MONITORING_API])
        for name, values in RENDERS.items()
    }


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_chart_passes_server_side_dry_run(
    plane: Cluster, renders: dict[str, list[dict[str, Any]]], render: str
) -> None:
    objects = renders[render]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ServiceMonitor", "PrometheusRule"} <= kinds
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    for obj in objects:
        plane.apply(obj, dry_run=True)


@pytest.fixture(scope="module")
def dispatcher_identity(plane: Cluster, renders: dict[str, list[dict[str, Any]]]) -> str:
    """The default render's ServiceAccount and RBAC, applied for real."""
    objects = renders["defaults"]
    for obj in objects:
        if obj["kind"] == "ServiceAccount" or obj["apiVersion"].startswith("rbac."):
            plane.apply(obj, dry_run=False)
    name = one(objects, "ServiceAccount")["metadata"]["name"]
    return f"system:serviceaccount:{RELEASE_NAMESPACE}:{name}"


def _pod_from(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": name, "namespace": RELEASE_NAMESPACE},
        "spec": template["spec"],
    }


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_pods_meet_the_restricted_pod_security_standard(
    plane: Cluster, renders: dict[str, list[dict[str, Any]]], dispatcher_identity: str, render: str
) -> None:
    pod = _pod_from(one(renders[render], "Deployment"), f"kd-psa-check-{render}")
    plane.apply(pod, dry_run=True)


def test_restricted_pod_security_is_really_enforced(
    plane: Cluster, renders: dict[str, list[dict[str, Any]]], dispatcher_identity: str
) -> None:
    """The control for the test above: a pod that may escalate privileges is refused."""
    pod = _pod_from(one(renders["defaults"], "Deployment"), "kd-psa-control")
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refusal = plane.refusal(pod, dry_run=True)
    assert refusal, "a pod allowing privilege escalation was admitted"
    assert "violates PodSecurity" in refusal, refusal


def test_chart_rbac_grants_what_the_dispatcher_needs_and_nothing_more(
    plane: Cluster, dispatcher_identity: str
) -> None:
    who = dispatcher_identity
    allowed = [
        ("create", "pods", "batch", ""),
        ("delete", "pods", "batch", ""),
        ("patch", "pods", "batch", ""),
        ("watch", "pods", "", ""),  # capacity: every pod, cluster-wide
        ("list", "nodes", "", ""),
        ("watch", "events", "batch", ""),
        # Routing's view of task dependencies (names and key names are all it keeps).
        *(
            (verb, resource, "batch", "")
            for verb in ("list", "watch")
            for resource in ("secrets", "configmaps", "persistentvolumeclaims", "serviceaccounts")
        ),
        # The source of dependency copies to external clusters.
        ("get", "secrets", "batch", ""),
        ("get", "configmaps", "batch", ""),
        ("create", "dispatchjobs", RELEASE_NAMESPACE, "kube-dispatcher.dev"),
        ("update", "dispatchjobs", RELEASE_NAMESPACE, "kube-dispatcher.dev"),
        ("list", "dispatchjobs", RELEASE_NAMESPACE, "kube-dispatcher.dev"),
        ("create", "secrets", RELEASE_NAMESPACE, ""),
        ("create", "leases", RELEASE_NAMESPACE, "coordination.k8s.io"),
    ]
    denied = [
        ("create", "pods", "default", ""),
        ("create", "pods", RELEASE_NAMESPACE, ""),
        ("list", "secrets", "", ""),
        ("delete", "secrets", "batch", ""),
        ("update", "configmaps", "batch", ""),
        ("update", "configmaps", RELEASE_NAMESPACE, ""),
        ("create", "dispatchjobs", "batch", "kube-dispatcher.dev"),
        ("list", "dispatchjobs", "", "kube-dispatcher.dev"),
        ("create", "secrets", "batch", ""),
        ("create", "leases", "batch", "coordination.k8s.io"),
        ("delete", "nodes", "", ""),
        ("create", "serviceaccounts", RELEASE_NAMESPACE, ""),
    ]
    for verb, resource, namespace, group in allowed:
        assert plane.can(who, verb, resource, namespace=namespace, group=group), (
            f"{who} cannot {verb} {resource} in {namespace or 'the cluster'}"
        )
    for verb, resource, namespace, group in denied:
        assert not plane.can(who, verb, resource, namespace=namespace, group=group), (
            f"{who} can {verb} {resource} in {namespace or 'the cluster'}"
        )
    for verb in ("update", "patch"):
        assert plane.can(
            who,
            verb,
            "dispatchjobs",
            namespace=RELEASE_NAMESPACE,
            group="kube-dispatcher.dev",
            subresource="status",
        )
    assert plane.can(who, "get", "pods", namespace="batch", subresource="log")
    assert not plane.can(who, "create", "pods", namespace="batch", subresource="exec")


def test_external_cluster_rbac_is_accepted_and_least_privilege(
    stack: Stack, tmp_path: Path
) -> None:
    objects = [
        doc
        for doc in yaml.safe_load_all((DEPLOY / "external-cluster-rbac.yaml").read_text())
        if doc
    ]
    with stack.kube("gpu-a100") as api:
        cluster = Cluster(api, tmp_path / "gpu-a100.json")
        for obj in objects:  # the Namespace first: the rest lives in it
            cluster.apply(obj, dry_run=False)
        dispatcher = "system:serviceaccount:batch:kube-dispatcher"
        assert cluster.can(dispatcher, "create", "pods", namespace="batch")
        assert cluster.can(dispatcher, "get", "pods", namespace="batch", subresource="log")
        assert cluster.can(dispatcher, "watch", "pods")
        assert cluster.can(dispatcher, "list", "nodes")
        assert not cluster.can(dispatcher, "create", "pods", namespace="dispatch")
        for resource in ("secrets", "configmaps", "persistentvolumeclaims", "serviceaccounts"):
            assert cluster.can(dispatcher, "watch", resource, namespace="batch")
            assert not cluster.can(dispatcher, "list", resource)  # only task namespaces
        # Dependency copies: made, updated and deleted in task namespaces only.
        for resource in ("secrets", "configmaps"):
            for verb in ("get", "create", "update", "delete"):
                assert cluster.can(dispatcher, verb, resource, namespace="batch")
            assert not cluster.can(dispatcher, "create", resource, namespace="dispatch")
        for resource in ("persistentvolumeclaims", "serviceaccounts"):
            assert not cluster.can(dispatcher, "create", resource, namespace="batch")
        assert not cluster.can(dispatcher, "create", "pods", namespace="batch", subresource="exec")
        # The task namespace enforces the baseline Pod Security Standard: a second line
        # behind the dispatcher's own check.
        privileged = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged"},
            "spec": {
                "containers": [
                    {"name": "c", "image": "busybox", "securityContext": {"privileged": True}}
                ]
            },
        }
        with pytest.raises(ApiException, match="violates PodSecurity"):
            client.CoreV1Api(api).create_namespaced_pod("batch", privileged, dry_run="All")
        minter = "system:serviceaccount:kube-system:vault-token-minter"
        token = {"namespace": "batch", "subresource": "token"}
        assert cluster.can(minter, "create", "serviceaccounts", name="kube-dispatcher", **token)
        assert not cluster.can(minter, "create", "serviceaccounts", name="default", **token)
        assert not cluster.can(minter, "create", "pods", namespace="batch")


def test_helm_install_dry_run_sees_the_operator_api_and_renders_notes(
    plane: Cluster, stack: Stack, helm: str, tmp_path: Path
) -> None:
    """Against a cluster serving monitoring.coreos.com/v1 (the CRDs installed above), helm
    itself renders the ServiceMonitor and PrometheusRule, and the NOTES."""
    env = {
        **os.environ,
        "KUBECONFIG": str(stack.admin_kubeconfig("plane")),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }
    # Another release name: the objects of "kd" applied above belong to no Helm release.
    out = run(
        [helm, "install", "kd-helm", CHART, "-n", RELEASE_NAMESPACE, "--dry-run=server"],
        env=env,
        timeout=120,
    )
    assert "kind: ServiceMonitor" in out
    assert "kind: PrometheusRule" in out
    assert "Task namespaces in this cluster (RBAC granted): batch" in out


def test_the_job_records_crd_is_established_with_its_printer_columns(plane: Cluster) -> None:
    crd = client.ApiextensionsV1Api(plane.api).read_custom_resource_definition(
        "dispatchjobs.kube-dispatcher.dev"
    )
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd.status.accepted_names.short_names == ["dj"]
    (version,) = crd.spec.versions
    assert [c.name for c in version.additional_printer_columns] == [
        "State",
        "Cluster",
        "Attempt",
        "Age",
        "Message",
    ]


def _dispatch_job(name: str, job_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "kube-dispatcher.dev/v1",
        "kind": "DispatchJob",
        "metadata": {"name": name, "namespace": RELEASE_NAMESPACE},
        "spec": {"id": job_id, "task": {"image": "busybox"}, "fence": {"holder": "", "term": 0}},
    }


def test_the_crd_accepts_a_record_named_by_its_id_and_refuses_any_other(plane: Cluster) -> None:
    plane.dynamic.resources.invalidate_cache()
    plane.apply(_dispatch_job("j0123456789abcdef0123", "j0123456789abcdef0123"), dry_run=True)
    refusal = plane.refusal(_dispatch_job("j0123456789abcdef0123", "j-another"), dry_run=True)
    assert refusal is not None
    assert "named by its job id" in refusal
