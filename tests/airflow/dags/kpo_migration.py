"""KubernetesPodOperator tasks in the style of Airflow's KPO examples, to be checked
before the import is changed (``dispatcher airflow check``): most parameters carry over,
the cluster-choosing ones become routing hints, some only tune how KPO watches its pod,
and two cannot work across clusters."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.sdk import DAG
from kubernetes.client import models as k8s

secret_env = Secret("env", "SQL_CONN", "airflow-secrets", "sql_alchemy_conn")
secret_all_keys = Secret("env", None, "airflow-secrets-2")
secret_volume = Secret("volume", "/etc/sql_conn", "airflow-secrets", "sql_alchemy_conn")

with DAG(
    dag_id="kpo_migration",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
) as dag:
    KubernetesPodOperator(
        task_id="secrets_and_init",
        name="hello-secrets",
        namespace="default",
        image="debian",
        cmds=["bash", "-cx"],
        arguments=["echo", "10"],
        labels={"foo": "bar"},
        secrets=[secret_env, secret_all_keys, secret_volume],
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="cfg"))],
        init_containers=[k8s.V1Container(name="init", image="busybox", command=["true"])],
        in_cluster=True,
        startup_check_interval_seconds=10,
        get_logs=True,
    )
    KubernetesPodOperator(
        task_id="from_a_template",
        kubernetes_conn_id="gpu_k8s",
        pod_template_file="pod_templates/gpu.yaml",
        hostnetwork=True,
        image="ubuntu:24.04",
        cmds=["nvidia-smi"],
    )
