"""KubernetesPodOperator's parameters: each is carried over, accepted without effect, or
refused at parse time with a reason; models and dicts give the same spec; the
idempotency key names one task instance try."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from dispatcher.airflow import DispatcherPodOperator
from dispatcher.airflow.parameters import (
    CARRIED_OVER,
    MAX_KEY_LENGTH,
    NO_EFFECT,
    REFUSED,
    airflow_labels,
    idempotency_key,
    safe_label_value,
)

#: KubernetesPodOperator.__init__'s parameters (apache-airflow-providers-cncf-kubernetes
#: 10.x), less BaseOperator's.
KPO_PARAMETERS = {
    "kubernetes_conn_id", "namespace", "image", "name", "random_name_suffix", "cmds",
    "arguments", "ports", "volume_mounts", "volumes", "env_vars", "env_from", "secrets",
    "in_cluster", "cluster_context", "labels", "reattach_on_restart",
    "startup_timeout_seconds", "startup_check_interval_seconds", "schedule_timeout_seconds",
    "get_logs", "base_container_name", "base_container_status_polling_interval",
    "init_container_logs", "container_logs", "image_pull_policy", "annotations",
    "container_resources", "affinity", "config_file", "node_selector", "image_pull_secrets",
    "service_account_name", "automount_service_account_token", "hostnetwork", "host_aliases",
    "tolerations", "security_context", "container_security_context", "dnspolicy",
    "dns_config", "hostname", "subdomain", "schedulername", "full_pod_spec",
    "init_containers", "log_events_on_failure", "do_xcom_push", "pod_template_file",
    "pod_template_dict", "priority_class_name", "pod_runtime_info_envs",
    "termination_grace_period", "configmaps", "skip_on_exit_code", "deferrable",
    "poll_interval", "log_pod_spec_on_failure", "on_finish_action", "is_delete_operator_pod",
    "termination_message_policy", "active_deadline_seconds", "callbacks",
    "progress_callback", "logging_interval", "trigger_kwargs",
    "container_name_log_prefix_enabled", "log_formatter",
}  # fmt: skip

#: A value asking for something, for each refused parameter.
ASKING = {
    "kubernetes_conn_id": "kubernetes_default",
    "config_file": "/home/airflow/.kube/config",
    "in_cluster": True,
    "cluster_context": "prod",
    "pod_template_file": "/templates/pod.yaml",
    "pod_template_dict": {"spec": {}},
    "full_pod_spec": k8s.V1Pod(),
    "init_containers": [k8s.V1Container(name="init")],
    "init_container_logs": True,
    "hostnetwork": True,
    "host_aliases": [k8s.V1HostAlias(ip="10.0.0.1", hostnames=["db"])],
    "dnspolicy": "ClusterFirstWithHostNet",
    "dns_config": k8s.V1PodDNSConfig(nameservers=["1.1.1.1"]),
    "hostname": "worker",
    "subdomain": "batch",
    "schedulername": "volcano",
    "security_context": {"runAsUser": 1000},
    "container_security_context": {"privileged": True},
    "automount_service_account_token": False,
    "ports": [k8s.V1ContainerPort(container_port=8080)],
    "env_from": [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="cfg"))],
    "configmaps": ["cfg"],
    "termination_grace_period": 60,
    "callbacks": [object],
    "progress_callback": print,
    "log_formatter": lambda container, line: line,
    "trigger_kwargs": {"x": 1},
    "random_name_suffix": False,
    "base_container_name": "main",
    "container_logs": ["sidecar"],
}


def test_every_kpo_parameter_is_carried_over_accepted_or_refused() -> None:
    groups = [CARRIED_OVER, set(NO_EFFECT), set(REFUSED)]
    assert set().union(*groups) == KPO_PARAMETERS
    assert sum(len(g) for g in groups) == len(KPO_PARAMETERS)  # disjoint
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


def test_all_refusals_are_reported_at_once() -> None:
    with pytest.raises(AirflowException) as refused:
        DispatcherPodOperator(
            task_id="t", image="busybox", in_cluster=True, hostnetwork=True, ports=[{"x": 1}]
        )
    assert str(refused.value).count("\n  - ") == 3


@pytest.mark.parametrize(
    "neutral",
    [
        {"in_cluster": None},
        {"hostnetwork": False},
        {"init_containers": []},
        {"random_name_suffix": True},
        {"base_container_name": "base"},
        {"container_logs": True},
        {"log_events_on_failure": True, "startup_check_interval_seconds": 1},
        {"logging_interval": 30, "base_container_status_polling_interval": 2},
    ],
)
def test_values_that_ask_for_nothing_are_accepted(neutral: dict[str, Any]) -> None:
    DispatcherPodOperator(task_id="t", image="busybox", **neutral)


def test_default_args_for_kpo_only_parameters_are_not_refusals() -> None:
    with DAG("d", schedule=None, default_args={"in_cluster": True, "config_file": "/x"}):
        DispatcherPodOperator(task_id="t", image="busybox")


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


def test_a_secret_injecting_every_key_is_refused_with_the_alternative() -> None:
    with pytest.raises(AirflowFailException, match="Secret\\('env', 'VARIABLE', 'db', 'key'\\)"):
        spec(secrets=[Secret("env", None, "db")])


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
    with DAG("d", schedule=None), pytest.raises(AirflowException, match="- in_cluster: "):
        DispatcherPodOperator.partial(task_id="t", image="busybox", in_cluster=True).expand(
            arguments=[["a"], ["b"]]
        )
    with DAG("d2", schedule=None):
        DispatcherPodOperator.partial(
            task_id="t", image="busybox", logging_interval=30, hostnetwork=False
        ).expand(arguments=[["a"], ["b"]])
