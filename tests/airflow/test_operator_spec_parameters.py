"""The operator takes KPO's pod fields and cluster-choosing parameters
(``parameters.SPEC_PARAMETERS``) as KubernetesPodOperator does, mapped tasks included,
puts them into the task spec, and templates the ones KPO templates."""

from __future__ import annotations

import inspect

import pytest
from airflow.sdk import DAG
from kubernetes.client import models as k8s

from dispatcher.airflow import DispatcherPodOperator, Secret, parameters

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

#: KubernetesPodOperator.template_fields (cncf.kubernetes provider 10.x); read from the
#: provider when it is installed.
PINNED_KPO_TEMPLATE_FIELDS = {
    "image", "name", "hostname", "cmds", "annotations", "arguments", "env_vars", "labels",
    "config_file", "pod_template_file", "pod_template_dict", "namespace",
    "container_resources", "volumes", "volume_mounts", "cluster_context", "env_from",
    "node_selector", "kubernetes_conn_id", "base_container_name", "trigger_kwargs",
}  # fmt: skip


def kpo_template_fields() -> set[str]:
    try:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    except ImportError:
        return PINNED_KPO_TEMPLATE_FIELDS
    return set(KubernetesPodOperator.template_fields)


def test_every_pod_field_and_routing_hint_is_a_parameter_of_the_operator() -> None:
    signature = inspect.signature(DispatcherPodOperator.__init__).parameters
    assert sorted(set(parameters.SPEC_PARAMETERS) - set(signature)) == []


def test_what_kpo_templates_is_templated_where_the_operator_holds_it() -> None:
    held = set(inspect.signature(DispatcherPodOperator.__init__).parameters)
    missing = (kpo_template_fields() & held) - set(DispatcherPodOperator.template_fields)
    assert sorted(missing) == []


def test_pod_fields_and_hints_reach_the_task_spec() -> None:
    task = DispatcherPodOperator(
        task_id="t",
        image="busybox",
        in_cluster=True,
        kubernetes_conn_id="gpu_k8s",
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="cfg"))],
        configmaps=["more"],
        secrets=[Secret("env", None, "db")],
        init_containers=[k8s.V1Container(name="init", image="busybox", command=["true"])],
        security_context={"runAsUser": 1000},
        hostname="worker",
        termination_grace_period=45,
    )
    spec = task.build_spec()
    assert spec["requirements"]["cluster_hints"] == {
        "in_cluster": True,
        "kubernetes_conn_id": "gpu_k8s",
    }
    assert spec["env_from"] == [
        {"configMapRef": {"name": "cfg"}},
        {"configMapRef": {"name": "more"}},
        {"secretRef": {"name": "db"}},
    ]
    assert spec["init_containers"] == [{"name": "init", "image": "busybox", "command": ["true"]}]
    assert spec["security_context"] == {"runAsUser": 1000}
    assert spec["hostname"] == "worker"
    assert spec["termination_grace_period"] == 45


def test_a_mapped_task_takes_them_too() -> None:
    with DAG(dag_id="mapped", schedule=None) as dag:
        DispatcherPodOperator.partial(
            task_id="m", image="busybox", in_cluster=False, hostname="worker"
        ).expand(arguments=[["a"], ["b"]])
    assert dag.task_dict["m"].partial_kwargs["in_cluster"] is False
