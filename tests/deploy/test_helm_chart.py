"""The Helm chart: lints, renders with default values and with every option, renders a
settings file the dispatcher accepts, and keeps the pod locked down and its RBAC minimal.

(tests/deploy/test_manifests_on_apiserver.py sends the same renders to a real API server.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.settings import Settings, load_settings

from .support import (
    CHART,
    FENCING,
    MONITORING_API,
    RECORDS_CRD,
    RELEASE_NAMESPACE,
    RULES,
    VALUES_DIR,
    by_kind,
    helm_template,
    one,
    rendered_settings,
    run,
)

OPTIONS = VALUES_DIR / "options.yaml"
DEFAULT_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
TASK_RULES = [
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["create", "delete", "get", "list", "watch", "patch"],
    },
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": [""],
        "resources": ["secrets", "configmaps", "persistentvolumeclaims", "serviceaccounts"],
        "verbs": ["list", "watch"],
    },
    # The source of dependency copies to external clusters: read, never written.
    {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get"]},
]


@pytest.fixture(scope="module")
def default_render(helm: str) -> list[dict[str, Any]]:
    return helm_template(helm)


@pytest.fixture(scope="module")
def options_render(helm: str) -> list[dict[str, Any]]:
    return helm_template(helm, values=[OPTIONS], api_versions=[MONITORING_API])


def _pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _pod_spec(objects)["containers"]
    return container


def _load(text: str, tmp_path: Path) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_settings(path)


@pytest.mark.parametrize("values", [[], [OPTIONS]], ids=["defaults", "options"])
def test_helm_lint_passes_strictly(helm: str, values: list[Path]) -> None:
    from tests.stack.build import KUBERNETES_VERSION

    cmd = [helm, "lint", "--strict", str(CHART), "--kube-version", KUBERNETES_VERSION]
    for path in values:
        cmd += ["--values", str(path)]
    run(cmd)


def test_default_render_has_the_expected_objects(default_render: list[dict[str, Any]]) -> None:
    assert {o["kind"] for o in default_render} == DEFAULT_KINDS
    for obj in default_render:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"], f"{obj['kind']} without a namespace"


@pytest.mark.parametrize("render", ["default_render", "options_render"])
def test_rendered_settings_are_accepted_by_the_dispatcher(
    render: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    objects = request.getfixturevalue(render)
    settings = _load(rendered_settings(objects), tmp_path)
    assert settings.service.port == _container(objects)["ports"][0]["containerPort"] == 8080
    assert settings.service.state_namespace == RELEASE_NAMESPACE
    assert settings.service.leader_election is True
    env = {e["name"]: e for e in _container(objects)["env"]}
    assert env["DISPATCHER_CONFIG"]["value"] == "/etc/kube-dispatcher/config.yaml"


def test_vault_values_become_kubernetes_auth_settings(
    options_render: list[dict[str, Any]], tmp_path: Path
) -> None:
    vault = _load(rendered_settings(options_render), tmp_path).vault
    assert vault is not None
    assert vault.url == "https://vault.example.com:8200"
    assert vault.namespace == "platform"
    assert vault.auth.kubernetes is not None
    assert vault.auth.kubernetes.role == "kube-dispatcher"
    assert vault.auth.kubernetes.mount == "kubernetes-plane"
    # A projected token for the "vault" audience, mounted where the settings point.
    token_path = vault.auth.kubernetes.jwt_path
    mounts = {m["name"]: m["mountPath"] for m in _container(options_render)["volumeMounts"]}
    assert token_path == Path(mounts["vault-token"]) / "token"
    volumes = {v["name"]: v for v in _pod_spec(options_render)["volumes"]}
    (source,) = volumes["vault-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "vault"
    # The CA comes from a ConfigMap, projected next to the settings file.
    assert vault.ca_file == Path(mounts["config"]) / "vault-ca.crt"
    config_sources = volumes["config"]["projected"]["sources"]
    assert {"key": "ca.crt", "path": "vault-ca.crt"} in config_sources[1]["configMap"]["items"]
    # Keys of values.config.vault are kept.
    assert vault.read_timeout_seconds == 20


def test_authentication_is_on_by_default_and_values_hold_no_secrets(
    helm: str,
    default_render: list[dict[str, Any]],
    options_render: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    auth = _load(rendered_settings(default_render), tmp_path).service.auth
    assert auth.token_review is not None
    assert auth.token_review.audience == "kube-dispatcher"
    assert auth.problems() == []
    # Static tokens are hashes: nothing in the render is a usable credential.
    options = _load(rendered_settings(options_render), tmp_path)
    assert [(t.tenant, t.sha256) for t in options.service.auth.static_tokens] == [
        ("ops", hashlib.sha256(b"ops-token").hexdigest())
    ]
    assert "ops-token" not in json.dumps(options_render)
    assert set(options.tenants) == {"data-science", "ops"}
    env = {e["name"] for e in _container(options_render)["env"]}
    assert not [name for name in env if "TOKEN" in name]
    refused = helm_template(
        helm, set_values=["auth.tokenReview.enabled=false"], expect_failure=True
    )
    assert "no authentication" in refused


@pytest.mark.parametrize("render", ["default_render", "options_render"])
def test_pod_is_locked_down(render: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(render)
    pod = _pod_spec(objects)
    container = _container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["runAsUser"] == 10001
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/kube-dispatcher"]["readOnly"] is True
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("render", ["default_render", "options_render"])
def test_probes_check_health_and_readiness_on_the_http_port(
    render: str, request: pytest.FixtureRequest
) -> None:
    container = _container(request.getfixturevalue(render))
    assert container["ports"][0] == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_replicas_spread_over_nodes(
    default_render: list[dict[str, Any]], options_render: list[dict[str, Any]]
) -> None:
    deployment = one(default_render, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    soft = _pod_spec(default_render)["affinity"]["podAntiAffinity"]
    (term,) = soft["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    hard = _pod_spec(options_render)["affinity"]["podAntiAffinity"]
    assert hard["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"] == {
        "matchLabels": selector
    }


def test_settings_changes_roll_the_pods(helm: str, default_render: list[dict[str, Any]]) -> None:
    changed = helm_template(helm, set_values=["config.routing.strategy=bin-pack"])

    def checksum(objects: list[dict[str, Any]]) -> str:
        return one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

    assert checksum(changed) != checksum(default_render)


def test_service_and_pdb(default_render: list[dict[str, Any]]) -> None:
    service = one(default_render, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
    ]
    selector = one(default_render, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    pdb = one(default_render, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}


def test_one_replica_gets_no_pdb_that_would_block_drains(helm: str) -> None:
    objects = helm_template(helm, set_values=["replicaCount=1"])
    assert by_kind(objects, "PodDisruptionBudget") == []
    assert "affinity" not in _pod_spec(objects)


def _rbac(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in objects
        if o["apiVersion"].startswith("rbac.authorization.k8s.io/")
    }


def test_rbac_is_least_privilege(default_render: list[dict[str, Any]]) -> None:
    rbac = _rbac(default_render)
    assert set(rbac) == {
        ("Role", "batch", "kd-kube-dispatcher-tasks"),
        ("RoleBinding", "batch", "kd-kube-dispatcher-tasks"),
        ("ClusterRole", "", "kd-kube-dispatcher-capacity"),
        ("ClusterRoleBinding", "", "kd-kube-dispatcher-capacity"),
        ("ClusterRole", "", "kd-kube-dispatcher-token-reviews"),
        ("ClusterRoleBinding", "", "kd-kube-dispatcher-token-reviews"),
        ("Role", RELEASE_NAMESPACE, "kd-kube-dispatcher-state"),
        ("RoleBinding", RELEASE_NAMESPACE, "kd-kube-dispatcher-state"),
    }
    assert rbac["Role", "batch", "kd-kube-dispatcher-tasks"]["rules"] == TASK_RULES
    assert rbac["ClusterRole", "", "kd-kube-dispatcher-capacity"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    ]
    # The API's authentication reviews tokens; nothing else cluster-wide.
    assert rbac["ClusterRole", "", "kd-kube-dispatcher-token-reviews"]["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    state = rbac["Role", RELEASE_NAMESPACE, "kd-kube-dispatcher-state"]["rules"]
    assert {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in state} == {
        # Job records: list at start, create, update with resourceVersion, delete.
        ("kube-dispatcher.dev", "dispatchjobs"): ["get", "list", "create", "update", "delete"],
        ("kube-dispatcher.dev", "dispatchjobs/status"): ["update", "patch"],
        # Their literal env values, one Secret per job.
        ("", "secrets"): ["get", "list", "create", "update", "delete"],
        # Leader election, as granted in the test stack.
        ("coordination.k8s.io", "leases"): [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    }  # fmt: skip
    everything = json.dumps([o.get("rules") for o in rbac.values()])
    for forbidden in ('"*"', "escalate", "bind", "impersonate", "pods/exec"):
        assert forbidden not in everything
    # Secrets and ConfigMaps: in the state namespace (the records' env values), and list
    # and watch in task namespaces (routing's view of task dependencies: TASK_RULES above,
    # compared whole); nowhere else.
    others = [
        o.get("rules")
        for k, o in rbac.items()
        if k[2] not in ("kd-kube-dispatcher-state", "kd-kube-dispatcher-tasks")
    ]
    assert "secrets" not in json.dumps(others)
    assert "configmaps" not in json.dumps(others)
    assert "configmaps" not in json.dumps(state)
    sa = one(default_render, "ServiceAccount")["metadata"]["name"]
    for key, obj in rbac.items():
        if key[0].endswith("Binding"):
            assert obj["subjects"] == [
                {"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NAMESPACE}
            ]
            assert obj["roleRef"]["name"] == key[2]


def test_task_namespaces_follow_the_in_plane_cluster(
    helm: str, options_render: list[dict[str, Any]]
) -> None:
    def task_namespaces(objects: list[dict[str, Any]]) -> set[str]:
        return {ns for kind, ns, name in _rbac(objects) if name.endswith("-tasks")}

    assert task_namespaces(options_render) == {"batch", "batch-priority"}
    explicit = helm_template(helm, set_values=["rbac.taskNamespaces={jobs-a,jobs-b}"])
    assert task_namespaces(explicit) == {"jobs-a", "jobs-b"}
    assert _rbac(helm_template(helm, set_values=["rbac.create=false"])) == {}


def test_monitoring_objects_only_where_the_operator_api_exists(
    default_render: list[dict[str, Any]], options_render: list[dict[str, Any]]
) -> None:
    assert by_kind(default_render, "ServiceMonitor") == []
    assert by_kind(default_render, "PrometheusRule") == []
    monitor = one(options_render, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(options_render, "Service")
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        assert service["metadata"]["labels"][key] == value
    (endpoint,) = monitor["spec"]["endpoints"]
    # The metrics port of its own, not the API's.
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert endpoint["port"] == "metrics"
    assert ports == {"http": 8080, "metrics": 9102}
    assert {p["name"]: p["containerPort"] for p in _container(options_render)["ports"]} == {
        "http": 8080,
        "metrics": 9102,
    }
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    rule = one(options_render, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_network_policy_limits_ingress_by_default(default_render: list[dict[str, Any]]) -> None:
    policy = one(default_render, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    api, metrics = policy["ingress"]
    # Only the release namespace until namespaces are listed.
    assert api == {"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"podSelector": {}}]}
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert "egress" not in policy


def test_network_policy_limits_ingress_and_egress(options_render: list[dict[str, Any]]) -> None:
    policy = one(options_render, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    api, metrics = policy["ingress"]
    assert api["ports"] == [{"port": "http", "protocol": "TCP"}]
    namespaces = api["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert namespaces == ["airflow"]
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    scrapers = metrics["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert scrapers == ["monitoring"]
    dns, api, vault, extra = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert [b["ipBlock"]["cidr"] for b in api["to"]] == [
        "10.0.0.1/32",
        "203.0.113.10/32",
        "198.51.100.0/28",
    ]
    assert [b["ipBlock"]["cidr"] for b in vault["to"]] == ["192.0.2.20/32"]
    assert vault["ports"] == [{"port": 8200, "protocol": "TCP"}]
    assert extra["to"] == [{"ipBlock": {"cidr": "192.0.2.53/32"}}]


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        (["replicaCont=2"], "additional properties 'replicaCont' not allowed"),
        (["replicaCount=0"], "minimum"),
        (["podAntiAffinity=sometimes"], "podAntiAffinity"),
        (["config.service.leader_election=false"], "duplicate pods"),
        (
            ["networkPolicy.egress.enabled=true"],
            "networkPolicy.egress.kubernetesAPI.cidrs is empty",
        ),
        (
            [
                "networkPolicy.egress.enabled=true",
                "networkPolicy.egress.kubernetesAPI.cidrs={10.0.0.1/32}",
                "vault.enabled=true",
                "vault.address=https://vault.example.com",
            ],
            "networkPolicy.egress.vault.cidrs is empty",
        ),
        (["vault.enabled=true"], "vault.address is required"),
        (["config.clusters=null"], "clusters"),
    ],
    ids=[
        "misspelt-key",
        "no-replicas",
        "unknown-anti-affinity",
        "replicas-without-leader-election",
        "network-policy-without-api-servers",
        "network-policy-without-vault",
        "vault-without-address",
        "no-clusters",
    ],
)
def test_bad_values_are_refused_with_a_clear_message(
    helm: str, set_values: list[str], message: str
) -> None:
    assert message in helm_template(helm, set_values=set_values, expect_failure=True)


def test_schema_knows_every_settings_section() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = set(schema["properties"]["config"]["properties"])
    assert sections == set(Settings.model_fields), (
        "values.schema.json's config sections differ from dispatcher/settings.py's Settings"
    )


def test_values_yaml_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    for key in values:
        index = text.index(f"\n{key}:")
        before = text[:index].rstrip().splitlines()[-1]
        first_child = text[index + 1 :].splitlines()[1] if isinstance(values[key], dict) else ""
        assert before.startswith("#") or first_child.strip().startswith("#"), (
            f"values.yaml: document {key}"
        )


def test_the_job_records_crd_ships_in_crds_with_its_printer_columns(helm: str) -> None:
    objects = helm_template(helm, include_crds=True)
    crd = one(objects, "CustomResourceDefinition")
    assert crd == yaml.safe_load(RECORDS_CRD.read_text())
    assert by_kind(helm_template(helm), "CustomResourceDefinition") == []  # crds/, not templates
    assert crd["metadata"]["name"] == "dispatchjobs.kube-dispatcher.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["dj"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "State": ".status.state",
        "Cluster": ".status.attempt.cluster",
        "Attempt": ".status.attempt.number",
        "Age": ".metadata.creationTimestamp",
        "Message": ".status.message",
    }


def test_the_fencing_policy_is_rendered_from_its_file_named_for_the_release(
    default_render: list[dict[str, Any]], helm: str
) -> None:
    policy_file, binding_file = (d for d in yaml.safe_load_all(FENCING.read_text()) if d)
    policy = one(default_render, "ValidatingAdmissionPolicy")
    binding = one(default_render, "ValidatingAdmissionPolicyBinding")
    assert policy["metadata"]["name"] == binding["metadata"]["name"] == "kd-kube-dispatcher-fence"
    assert policy["spec"] == policy_file["spec"]
    assert binding["spec"] == {**binding_file["spec"], "policyName": "kd-kube-dispatcher-fence"}
    assert binding["spec"]["paramRef"]["parameterNotFoundAction"] == "Allow"
    assert "namespace" not in binding["spec"]["paramRef"]  # the Lease of the record's namespace
    assert policy["metadata"]["labels"]["app.kubernetes.io/instance"] == "kd"
    # State elsewhere than the in-plane cluster: the records (and their policy) live there.
    elsewhere = helm_template(helm, set_values=["config.service.state_cluster=gpu"])
    assert by_kind(elsewhere, "ValidatingAdmissionPolicy") == []
