"""KubernetesPodOperator's parameters: each is carried over, becomes a pod field of the
task spec or a routing hint, is accepted without effect, or is refused at parse time with
a reason; models and dicts give the same spec; the idempotency key names one task
instance try.

The parameters are read from the installed provider's ``KubernetesPodOperator`` when
apache-airflow-providers-cncf-kubernetes is importable, so a new provider release with a
parameter in no group fails here. Without the provider (the project's own environment),
the pinned list of provider 10.25.0 stands in for it.
"""

from __future__ import annotations

import inspect
import runpy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.sdk import DAG, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from dispatcher.airflow import DispatcherPodOperator
from dispatcher.airflow.parameters import (
    CARRIED_OVER,
    MAX_KEY_LENGTH,
    NO_EFFECT,
    POD_FIELDS,
    REFUSED,
    ROUTING_HINTS,
    airflow_labels,
    cluster_hints,
    idempotency_key,
    over_template,
    plain,
    pod_fields,
    pod_template_fields,
    requirements,
    safe_label_value,
    secrets_to_spec,
    validate_spec,
)
from dispatcher.errors import SpecError

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

#: KubernetesPodOperator.__init__'s parameters in apache-airflow-providers-cncf-kubernetes
#: 10.25.0, less BaseOperator's: used when the provider is not installed.
PINNED_KPO_PARAMETERS = {
    "kubernetes_conn_id", "namespace", "image", "name", "random_name_suffix", "cmds",
    "arguments", "ports", "volume_mounts", "volumes", "env_vars", "env_from", "secrets",
    "in_cluster", "cluster_context", "labels", "reattach_on_restart", "durable",
    "startup_timeout_seconds", "startup_check_interval_seconds", "schedule_timeout_seconds",
    "get_logs", "base_container_name", "base_container_status_polling_interval",
    "init_container_logs", "container_logs", "image_pull_policy", "annotations",
    "container_resources", "affinity", "config_file", "runtime_class_name", "node_selector",
    "image_pull_secrets", "service_account_name", "automount_service_account_token",
    "hostnetwork", "host_aliases", "tolerations", "security_context",
    "container_security_context", "xcom_sidecar_container_security_context", "dnspolicy",
    "dns_config", "hostname", "subdomain", "schedulername", "full_pod_spec",
    "init_containers", "log_events_on_failure", "log_events_on_startup", "do_xcom_push",
    "pod_template_file", "pod_template_dict", "priority_class_name", "pod_runtime_info_envs",
    "termination_grace_period", "configmaps", "skip_on_exit_code", "deferrable",
    "poll_interval", "log_pod_spec_on_failure", "on_finish_action", "on_kill_action",
    "is_delete_operator_pod", "termination_message_policy", "active_deadline_seconds",
    "callbacks", "progress_callback", "logging_interval", "trigger_kwargs",
    "container_name_log_prefix_enabled", "log_formatter",
}  # fmt: skip


def _installed_kpo_parameters() -> set[str] | None:
    """The installed provider's KubernetesPodOperator parameters, less BaseOperator's."""
    try:
        from airflow.providers.cncf.kubernetes.operators.pod import (
            KubernetesPodOperator,
        )
    except ImportError:
        return None
    own = set(inspect.signature(KubernetesPodOperator.__init__).parameters)
    base = set(inspect.signature(BaseOperator.__init__).parameters)
    return own - base - {"self", "args", "kwargs"}


INSTALLED_KPO_PARAMETERS = _installed_kpo_parameters()
KPO_PARAMETERS = (
    PINNED_KPO_PARAMETERS if INSTALLED_KPO_PARAMETERS is None else INSTALLED_KPO_PARAMETERS
)
GROUPS = {
    "CARRIED_OVER": set(CARRIED_OVER),
    "POD_FIELDS": set(POD_FIELDS),
    "ROUTING_HINTS": set(ROUTING_HINTS),
    "NO_EFFECT": set(NO_EFFECT),
    "REFUSED": set(REFUSED),
}

#: A value asking for something, for each refused parameter.
ASKING = {
    "hostnetwork": True,
    "schedulername": "volcano",
    "durable": False,
    "on_kill_action": "keep_pod",
    "callbacks": [object],
    "progress_callback": print,
    "log_formatter": lambda container, line: line,
    "trigger_kwargs": {"x": 1},
    "random_name_suffix": False,
    "base_container_name": "main",
    "container_logs": ["sidecar"],
}


def test_every_kpo_parameter_is_in_exactly_one_group() -> None:
    grouped = set().union(*GROUPS.values())
    assert sorted(KPO_PARAMETERS - grouped) == [], "KPO parameters in no group"
    twice = {
        name: [group for group, names in GROUPS.items() if name in names]
        for name in grouped
        if sum(name in names for names in GROUPS.values()) > 1
    }
    assert twice == {}, "parameters in more than one group"
    # A group may keep a parameter an older installed provider lacks, never an invented one.
    assert sorted(grouped - KPO_PARAMETERS - PINNED_KPO_PARAMETERS) == []
    assert set(ASKING) == set(REFUSED)


def test_carried_over_parameters_are_in_the_operators_signature() -> None:
    signature = set(inspect.signature(DispatcherPodOperator.__init__).parameters)
    assert CARRIED_OVER - {"do_xcom_push"} <= signature


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_parameter_fails_at_parse_time_saying_why_and_what_instead(name: str) -> None:
    with pytest.raises(AirflowException) as refused:
        DispatcherPodOperator(task_id="t", image="busybox", **{name: ASKING[name]})
    message = str(refused.value)
    assert f"- {name}: " in message
    assert REFUSED[name].why in message
    assert REFUSED[name].instead in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("durable", False),
        ("on_kill_action", "keep_pod"),
        ("log_events_on_startup", False),
        ("xcom_sidecar_container_security_context", {"runAsNonRoot": True}),
    ],
)
def test_provider_10_25_parameters_get_the_operators_answer_not_a_type_error(
    name: str, value: Any
) -> None:
    # BaseOperator would raise TypeError("Invalid arguments were passed") for a
    # parameter in no group.
    if name in REFUSED:
        with pytest.raises(AirflowException, match=f"- {name}: "):
            DispatcherPodOperator(task_id="t", image="busybox", **{name: value})
    else:
        DispatcherPodOperator(task_id="t", image="busybox", **{name: value})


def test_all_refusals_are_reported_at_once() -> None:
    with pytest.raises(AirflowException) as refused:
        DispatcherPodOperator(
            task_id="t",
            image="busybox",
            hostnetwork=True,
            schedulername="volcano",
            random_name_suffix=False,
        )
    assert str(refused.value).count("\n  - ") == 3


@pytest.mark.parametrize(
    "neutral",
    [
        {"hostnetwork": False},
        {"random_name_suffix": True},
        {"base_container_name": "base"},
        {"container_logs": True},
        {"durable": True, "on_kill_action": "delete_pod"},
        {"log_events_on_failure": True, "startup_check_interval_seconds": 1},
        {"logging_interval": 30, "base_container_status_polling_interval": 2},
        {"init_container_logs": True, "log_events_on_startup": True},
    ],
)
def test_values_that_ask_for_nothing_are_accepted(neutral: dict[str, Any]) -> None:
    DispatcherPodOperator(task_id="t", image="busybox", **neutral)


def test_default_args_for_kpo_only_parameters_are_not_refusals() -> None:
    with DAG("d", schedule=None, default_args={"hostnetwork": True, "schedulername": "x"}):
        DispatcherPodOperator(task_id="t", image="busybox")


# ------------------------------------------------------------------- pod fields, hints


def kpo_spec(**kwargs: Any) -> dict[str, Any]:
    """The spec fields ``pod_fields`` makes of KPO parameters, as the dispatcher checks
    them (``validate_spec`` raises on anything it would refuse)."""
    fields = pod_fields(kwargs)
    validate_spec({"image": "busybox", **fields})
    return fields


def test_pod_fields_from_models_and_from_dicts_are_the_same() -> None:
    models = kpo_spec(
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="cfg"))],
        configmaps=["more"],
        init_containers=[
            k8s.V1Container(
                name="init",
                image="busybox",
                command=["sh", "-c", "true"],
                resources=k8s.V1ResourceRequirements(requests={"cpu": "100m"}),
                security_context=k8s.V1SecurityContext(run_as_non_root=True),
            )
        ],
        ports=[k8s.V1ContainerPort(container_port=8080, name="http")],
        security_context=k8s.V1PodSecurityContext(run_as_user=1000, fs_group=2000),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        termination_grace_period=10,
        automount_service_account_token=False,
        host_aliases=[k8s.V1HostAlias(ip="10.0.0.1", hostnames=["db"])],
        dnspolicy="None",
        dns_config=k8s.V1PodDNSConfig(
            nameservers=["1.1.1.1"], options=[k8s.V1PodDNSConfigOption(name="ndots", value="2")]
        ),
        hostname="worker",
        subdomain="batch",
        runtime_class_name="gvisor",
    )
    dicts = kpo_spec(
        env_from=[{"configMapRef": {"name": "cfg"}}],
        configmaps=["more"],
        init_containers=[
            {
                "name": "init",
                "image": "busybox",
                "command": ["sh", "-c", "true"],
                "resources": {"requests": {"cpu": "100m"}},
                "securityContext": {"runAsNonRoot": True},
            }
        ],
        ports=[{"containerPort": 8080, "name": "http"}],
        security_context={"runAsUser": 1000, "fsGroup": 2000},
        container_security_context={
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        termination_grace_period=10,
        automount_service_account_token=False,
        host_aliases=[{"ip": "10.0.0.1", "hostnames": ["db"]}],
        dnspolicy="None",
        dns_config={"nameservers": ["1.1.1.1"], "options": [{"name": "ndots", "value": "2"}]},
        hostname="worker",
        subdomain="batch",
        runtime_class_name="gvisor",
    )
    assert models == dicts
    assert models["env_from"] == [
        {"configMapRef": {"name": "cfg"}},
        {"configMapRef": {"name": "more"}},
    ]


def test_pod_fields_that_ask_for_nothing_are_left_out() -> None:
    assert pod_fields({"env_from": [], "configmaps": None, "hostname": None, "image": "x"}) == {}


def test_an_invalid_pod_field_is_refused_at_its_path() -> None:
    with pytest.raises(ValueError, match=r"ports\[0\]\.hostPort"):
        kpo_spec(ports=[k8s.V1ContainerPort(container_port=80, host_port=80)])


def test_a_secret_injecting_every_key_becomes_env_from() -> None:
    env_from: list[dict[str, Any]] = []
    env, volumes, mounts = secrets_to_spec([Secret("env", None, "db")], env_from)
    assert (env, volumes, mounts) == ([], [], [])
    assert env_from == [{"secretRef": {"name": "db"}}]
    validate_spec({"image": "busybox", "env_from": env_from})


def test_cluster_choosing_parameters_become_routing_hints() -> None:
    hints = cluster_hints(
        {"in_cluster": False, "kubernetes_conn_id": "gpu_k8s", "cluster_context": None}
    )
    assert hints == {"in_cluster": False, "kubernetes_conn_id": "gpu_k8s"}
    merged = requirements({"region": "eu-west-1"}, gpus=None, gpu_model=None, hints=hints)
    assert merged == {"region": "eu-west-1", "cluster_hints": hints}
    spec = validate_spec({"image": "busybox", "requirements": merged})
    assert spec.requirements.cluster_hints.kubernetes_conn_id == "gpu_k8s"
    assert cluster_hints({"in_cluster": None, "image": "x"}) == {}


def test_a_kubeconfig_path_is_a_name_only() -> None:
    # The path is carried as the DAG wrote it; nothing is opened or read.
    hints = cluster_hints({"config_file": "/nonexistent/kubeconfig"})
    spec = validate_spec({"image": "busybox", "requirements": {"cluster_hints": hints}})
    assert spec.requirements.cluster_hints.config_file == "/nonexistent/kubeconfig"


def test_plain_serializes_nested_models() -> None:
    assert plain([k8s.V1HostAlias(ip="10.0.0.1")]) == [{"ip": "10.0.0.1"}]


# ----------------------------------------------------------------------- pod templates

TEMPLATE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "etl", "namespace": "data", "labels": {"team": "data"}},
    "spec": {
        "restartPolicy": "Never",
        "serviceAccountName": "etl-runner",
        "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists"}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        "volumes": [{"name": "cfg", "configMap": {"name": "etl-config"}}],
        "initContainers": [{"name": "wait", "image": "busybox:1.36"}],
        "containers": [
            {
                "name": "base",
                "image": "ghcr.io/example/etl:2.1",
                "command": ["python", "-m", "etl"],
                "env": [{"name": "MODE", "value": "full"}],
                "envFrom": [{"configMapRef": {"name": "etl-env"}}],
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/etl"}],
            }
        ],
    },
}


def test_a_pod_template_carries_over_as_task_spec_fields() -> None:
    fields = pod_template_fields(TEMPLATE)
    assert fields == {
        "name": "etl",
        "namespace": "data",
        "labels": {"team": "data"},
        "service_account_name": "etl-runner",
        "node_selector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists"}],
        "security_context": {"runAsNonRoot": True, "runAsUser": 1000},
        "volumes": [{"name": "cfg", "configMap": {"name": "etl-config"}}],
        "init_containers": [{"name": "wait", "image": "busybox:1.36"}],
        "image": "ghcr.io/example/etl:2.1",
        "cmds": ["python", "-m", "etl"],
        "env_vars": [{"name": "MODE", "value": "full"}],
        "env_from": [{"configMapRef": {"name": "etl-env"}}],
        "container_resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
        "volume_mounts": [{"name": "cfg", "mountPath": "/etc/etl"}],
    }
    validate_spec(fields)


def test_a_v1pod_template_gives_the_same_fields_as_its_dict() -> None:
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="etl", labels={"team": "data"}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            containers=[k8s.V1Container(name="job", image="busybox", args=["run"])],
        ),
    )
    assert pod_template_fields(pod, where="full_pod_spec") == {
        "name": "etl",
        "labels": {"team": "data"},
        "image": "busybox",
        "arguments": ["run"],
    }


def test_the_operators_parameters_are_laid_over_the_template_as_kpo_merges() -> None:
    merged = over_template(
        pod_template_fields(TEMPLATE),
        {
            "image": "ghcr.io/example/etl:2.2",
            "labels": {"run": "nightly"},
            "env_vars": [{"name": "DAY", "value": "2024-06-01"}],
            "node_selector": {"zone": "a"},
        },
    )
    assert merged["image"] == "ghcr.io/example/etl:2.2"
    assert merged["labels"] == {"team": "data", "run": "nightly"}
    assert merged["env_vars"] == [
        {"name": "MODE", "value": "full"},
        {"name": "DAY", "value": "2024-06-01"},
    ]
    assert merged["node_selector"] == {"pool": "batch", "zone": "a"}
    assert merged["cmds"] == ["python", "-m", "etl"]
    validate_spec(merged)


def test_template_fields_that_contradict_routing_or_do_not_carry_over_are_refused() -> None:
    template = {
        "metadata": {"name": "x", "generateName": "x-"},
        "spec": {
            "nodeName": "gpu-node-7",
            "schedulerName": "volcano",
            "hostNetwork": True,
            "restartPolicy": "OnFailure",
            "topologySpreadConstraints": [],
            "containers": [
                {"name": "base", "image": "busybox", "livenessProbe": {"exec": {}}},
                {"name": "proxy", "image": "envoyproxy/envoy:v1.30"},
            ],
        },
        "status": {},
    }
    with pytest.raises(SpecError) as refused:
        pod_template_fields(template)
    problems = {p.field: p.message for p in refused.value.problems}
    assert set(problems) == {
        "pod_template_dict.status",
        "pod_template_dict.metadata.generateName",
        "pod_template_dict.spec.nodeName",
        "pod_template_dict.spec.schedulerName",
        "pod_template_dict.spec.hostNetwork",
        "pod_template_dict.spec.restartPolicy",
        "pod_template_dict.spec.topologySpreadConstraints",
        "pod_template_dict.spec.containers[0].livenessProbe",
        "pod_template_dict.spec.containers[1]",
    }
    assert "each cluster's scheduler the node" in problems["pod_template_dict.spec.nodeName"]
    assert (
        "as an init container with restartPolicy Always"
        in (problems["pod_template_dict.spec.containers[1]"])
    )


def test_template_values_that_ask_for_nothing_are_not_refusals() -> None:
    fields = pod_template_fields(
        {
            "spec": {
                "hostNetwork": False,
                "hostUsers": True,
                "nodeName": "",
                "schedulerName": "default-scheduler",
                "containers": [],
            }
        }
    )
    assert fields == {}


def test_a_template_asking_for_a_user_namespace_is_refused_not_dropped() -> None:
    with pytest.raises(SpecError) as refused:
        pod_template_fields({"spec": {"hostUsers": False}}, where="full_pod_spec")
    assert [p.field for p in refused.value.problems] == ["full_pod_spec.spec.hostUsers"]


# ----------------------------------------------------------------------- the operator


def spec(**kwargs: Any) -> dict[str, Any]:
    return DispatcherPodOperator(task_id="t", image="busybox", **kwargs).build_spec()


def test_kubernetes_models_and_plain_dicts_give_the_same_spec() -> None:
    models = spec(
        env_vars=[
            k8s.V1EnvVar(name="A", value="1"),
            k8s.V1EnvVar(
                name="TOKEN",
                value_from=k8s.V1EnvVarSource(
                    secret_key_ref=k8s.V1SecretKeySelector(name="s", key="token")
                ),
            ),
        ],
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "2", "memory": "4Gi"}, limits={"nvidia.com/gpu": "1"}
        ),
        volumes=[
            k8s.V1Volume(
                name="data",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name="c"),
            )
        ],
        volume_mounts=[k8s.V1VolumeMount(name="data", mount_path="/data", read_only=True)],
        tolerations=[k8s.V1Toleration(key="gpu", operator="Exists", effect="NoSchedule")],
        affinity=k8s.V1Affinity(
            node_affinity=k8s.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                    node_selector_terms=[
                        k8s.V1NodeSelectorTerm(
                            match_expressions=[
                                k8s.V1NodeSelectorRequirement(
                                    key="zone", operator="In", values=["a"]
                                )
                            ]
                        )
                    ]
                )
            )
        ),
        image_pull_secrets=[k8s.V1LocalObjectReference(name="reg")],
    )
    dicts = spec(
        env_vars=[
            {"name": "A", "value": "1"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        ],
        container_resources={
            "requests": {"cpu": "2", "memory": "4Gi"},
            "limits": {"nvidia.com/gpu": "1"},
        },
        volumes=[{"name": "data", "persistent_volume_claim": {"claim_name": "c"}}],
        volume_mounts=[{"name": "data", "mountPath": "/data", "readOnly": True}],
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        image_pull_secrets=[{"name": "reg"}],
    )
    assert models == dicts
    assert models["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]


def test_env_vars_as_a_mapping_and_runtime_info_envs_are_variables() -> None:
    env = spec(
        env_vars={"A": "1"},
        pod_runtime_info_envs=[
            k8s.V1EnvVar(
                name="POD_IP",
                value_from=k8s.V1EnvVarSource(
                    field_ref=k8s.V1ObjectFieldSelector(field_path="status.podIP")
                ),
            )
        ],
    )["env_vars"]
    assert env == [
        {"name": "A", "value": "1"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            {"request_memory": "1Gi", "limit_memory": "2Gi", "limit_gpu": 1},
            {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"}},
        ),
        (
            k8s.V1ResourceRequirements(limits={"cpu": "1"}),
            {"limits": {"cpu": "1"}},
        ),
    ],
)
def test_the_older_resources_spelling_is_container_resources(old: Any, new: Any) -> None:
    assert spec(resources=old)["container_resources"] == new


def test_resources_and_container_resources_together_are_refused() -> None:
    with pytest.raises(AirflowException, match="old name of container_resources"):
        spec(resources={"limits": {"cpu": "1"}}, container_resources={"limits": {"cpu": "2"}})


@dataclass
class Secret:
    """Shaped like airflow.providers.cncf.kubernetes.secret.Secret."""

    deploy_type: str
    deploy_target: str | None
    secret: str
    key: str | None = None
    items: list[dict[str, str]] | None = None


def test_secrets_become_variables_and_read_only_volumes() -> None:
    out = spec(
        secrets=[
            Secret("env", "DB_PASSWORD", "db", "password"),
            Secret("volume", "/etc/creds", "gcp-sa", items=[{"key": "k", "path": "k.json"}]),
        ]
    )
    assert out["env_vars"] == [
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
    ]
    assert out["volumes"] == [
        {
            "name": "secret-1-gcp-sa",
            "secret": {"secretName": "gcp-sa", "items": [{"key": "k", "path": "k.json"}]},
        }
    ]
    assert out["volume_mounts"] == [
        {"name": "secret-1-gcp-sa", "mountPath": "/etc/creds", "readOnly": True}
    ]


def test_routing_shortcuts_fold_into_requirements() -> None:
    assert spec(gpus=2, gpu_model="A100", requirements={"region": "eu-west"})["requirements"] == {
        "gpus": 2,
        "gpu_model": "A100",
        "region": "eu-west",
    }
    with pytest.raises(AirflowFailException, match="contradicts"):
        spec(gpus=2, requirements={"gpus": 4})


def test_an_invalid_spec_is_refused_at_parse_time_with_every_problem() -> None:
    with pytest.raises(AirflowFailException) as refused:
        DispatcherPodOperator(
            task_id="t",
            image="busybox",
            labels={"Not A Label": "x"},
            container_resources={"requests": {"cpu": "lots"}},
        )
    assert "2 problems" in str(refused.value)


def test_templated_fields_are_checked_when_the_task_runs() -> None:
    task = DispatcherPodOperator(
        task_id="t", image="{{ var.value.image }}", labels={"run": "{{ ds }}"}
    )
    assert task.image == "{{ var.value.image }}"


def test_pod_fields_and_cluster_hints_reach_the_spec_through_the_operator() -> None:
    out = spec(
        in_cluster=False,
        kubernetes_conn_id="gpu_k8s",
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="db"))],
        init_containers=[k8s.V1Container(name="init", image="busybox")],
        security_context={"runAsNonRoot": True, "runAsUser": 1000},
        hostname="worker",
        on_finish_action="delete_active_pod",
    )
    assert out["requirements"]["cluster_hints"] == {
        "in_cluster": False,
        "kubernetes_conn_id": "gpu_k8s",
    }
    assert out["env_from"] == [{"secretRef": {"name": "db"}}]
    assert out["init_containers"] == [{"name": "init", "image": "busybox"}]
    assert out["security_context"] == {"runAsNonRoot": True, "runAsUser": 1000}
    assert out["hostname"] == "worker"
    assert validate_spec(out).on_finish_action.value == "keep_pod"


@pytest.mark.parametrize(
    "neutral", [{"in_cluster": None}, {"init_containers": []}, {"configmaps": None}]
)
def test_pod_fields_and_hints_that_ask_for_nothing_leave_the_spec_alone(
    neutral: dict[str, Any],
) -> None:
    assert spec(**neutral) == spec()


def test_a_pod_field_the_dispatcher_refuses_fails_at_parse_time_at_its_path() -> None:
    with pytest.raises(AirflowFailException, match=r"ports\[0\]\.hostPort"):
        spec(ports=[k8s.V1ContainerPort(container_port=8080, host_port=8080)])


def test_on_finish_action_and_is_delete_operator_pod() -> None:
    assert spec(on_finish_action="keep_pod")["on_finish_action"] == "keep_pod"
    assert spec(is_delete_operator_pod=False)["on_finish_action"] == "keep_pod"


# ----------------------------------------------------------------------------- identity

IDENTITY = ("etl", "load.part", "scheduled__2024-06-01T00:00:00+00:00", 3, 2)


def test_the_idempotency_key_names_dag_task_map_index_try_and_run() -> None:
    assert idempotency_key(*IDENTITY) == (
        "airflow/etl/load.part/3/2/scheduled__2024-06-01T00:00:00+00:00"
    )
    assert idempotency_key("etl", "load", "manual__1", None, 1) == "airflow/etl/load/-1/1/manual__1"


@pytest.mark.parametrize("position", range(5))
def test_each_part_of_the_task_instance_changes_the_key(position: int) -> None:
    changed = list(IDENTITY)
    changed[position] = changed[position] + (1 if isinstance(changed[position], int) else "x")
    assert idempotency_key(*changed) != idempotency_key(*IDENTITY)


def test_run_ids_with_slashes_cannot_collide() -> None:
    assert idempotency_key("a", "b", "r/1/2", 1, 1) != idempotency_key("a", "b", "r", 1, 1)
    assert idempotency_key("a", "b", "1/r", -1, 1) != idempotency_key("a", "b", "r", 1, 1)


def test_long_keys_are_hashed_to_fit() -> None:
    key = idempotency_key("d" * 250, "t" * 250, "r" * 250, 1, 1)
    assert len(key) <= MAX_KEY_LENGTH
    assert key.startswith("airflow/sha256/")
    assert key != idempotency_key("d" * 250, "t" * 250, "r" * 250, 1, 2)


def test_kpo_style_labels_are_valid_label_values() -> None:
    labels = airflow_labels(*IDENTITY)
    assert labels["dag_id"] == "etl"
    assert labels["map_index"] == "3"
    assert labels["run_id"].startswith("scheduled__2024-06-01T000000")
    assert safe_label_value("x" * 100) != safe_label_value("x" * 99)
    assert len(safe_label_value("x" * 100)) <= 63


def test_mapped_tasks_are_refused_at_parse_time_too() -> None:
    with DAG("d", schedule=None), pytest.raises(AirflowException, match="- hostnetwork: "):
        DispatcherPodOperator.partial(task_id="t", image="busybox", hostnetwork=True).expand(
            arguments=[["a"], ["b"]]
        )
    with DAG("d2", schedule=None):
        DispatcherPodOperator.partial(
            task_id="t", image="busybox", logging_interval=30, hostnetwork=False
        ).expand(arguments=[["a"], ["b"]])


# ----------------------------------------------------------------------- pod templates

TEMPLATE_YAML = """\
apiVersion: v1
kind: Pod
metadata:
  name: etl
  labels: {team: data}
spec:
  restartPolicy: Never
  tolerations: [{key: batch, operator: Exists}]
  containers:
    - name: base
      image: ghcr.io/example/etl:2.1
      command: [python, -m, etl]
      env: [{name: MODE, value: full}]
"""


def test_an_operator_with_a_pod_template_needs_no_image_and_its_parameters_win(
    tmp_path: Path,
) -> None:
    template = tmp_path / "etl.yaml"
    template.write_text(TEMPLATE_YAML)
    built = DispatcherPodOperator(
        task_id="t",
        pod_template_file=str(template),
        env_vars={"DAY": "2024-06-01"},
        labels={"run": "nightly"},
    ).build_spec()
    assert built["image"] == "ghcr.io/example/etl:2.1"
    assert built["name"] == "etl"
    assert built["cmds"] == ["python", "-m", "etl"]
    assert built["labels"] == {"team": "data", "run": "nightly"}
    assert built["env_vars"] == [
        {"name": "MODE", "value": "full"},
        {"name": "DAY", "value": "2024-06-01"},
    ]
    assert built["tolerations"] == [{"key": "batch", "operator": "Exists"}]


def test_full_pod_spec_goes_over_the_template_and_the_parameters_over_both() -> None:
    template = yaml.safe_load(TEMPLATE_YAML)
    full = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(labels={"team": "ml"}),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="base", image="ghcr.io/example/etl:3.0")],
            priority_class_name="batch-low",
        ),
    )
    built = DispatcherPodOperator(
        task_id="t",
        pod_template_dict=template,
        full_pod_spec=full,
        priority_class_name="batch-high",
    ).build_spec()
    assert built["image"] == "ghcr.io/example/etl:3.0"
    assert built["labels"] == {"team": "ml"}
    assert built["priority_class_name"] == "batch-high"
    assert built["cmds"] == ["python", "-m", "etl"]


def test_a_relative_pod_template_file_is_found_next_to_the_dag_file(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "etl.yaml").write_text(TEMPLATE_YAML)
    dag_file = tmp_path / "etl_dag.py"
    dag_file.write_text(
        "from airflow.sdk import DAG\n"
        "from dispatcher.airflow import DispatcherPodOperator\n"
        "with DAG(dag_id='etl', schedule=None) as dag:\n"
        "    DispatcherPodOperator(task_id='t', pod_template_file='templates/etl.yaml')\n"
    )
    dag = runpy.run_path(str(dag_file))["dag"]
    assert dag.get_task("t").build_spec()["image"] == "ghcr.io/example/etl:2.1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "pod_template_file 'missing.yaml': no such file (looked for "),
        ("spec: [unclosed", "is not valid YAML at line 1"),
        ("- a list", "holds no pod (a mapping with metadata and spec)"),
        ("spec:\n  nodeName: n1\n", "pod_template_file.spec.nodeName: not supported"),
    ],
)
def test_a_pod_template_file_that_cannot_be_used_fails_at_parse_time_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "missing.yaml").write_text(content)
    with pytest.raises(AirflowException) as refused:
        DispatcherPodOperator(task_id="t", pod_template_file="missing.yaml")
    assert message in str(refused.value)
    assert "Traceback" not in str(refused.value)


def test_without_image_or_template_the_operator_says_what_is_missing() -> None:
    with pytest.raises(AirflowException, match="image is required \\(or a pod template"):
        DispatcherPodOperator(task_id="t")
