"""Templates inside Kubernetes model objects, as KubernetesPodOperator DAGs write them:
``{{ ds }}`` in a ``V1EnvVar``, a resource limit from ``params``, a volume and its mount
named by templates, a plain dict nested in a model, and the fields KPO templates that
are pod fields (``hostname``, ``env_from``) or routing hints (``kubernetes_conn_id``).
``bad_limit`` renders a limit that is not a quantity and must fail when it runs, naming
the field."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG
from kubernetes.client import models as k8s

from dispatcher.airflow import DispatcherPodOperator

with DAG(
    dag_id="templated_models",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    params={
        "memory": "3Gi",
        "cpu": "1500m",
        "scratch": "scratch-space",
        "bad": "lots",
        "config": "loader-config",
        "conn": "kubernetes_default",
    },
) as dag:
    DispatcherPodOperator(
        task_id="render",
        image="registry.example.com/etl/loader:3",
        cmds=["loader"],
        arguments=["--date", "{{ ds }}"],
        env_vars=[
            k8s.V1EnvVar(name="PARTITION", value="{{ ds }}"),
            k8s.V1EnvVar(name="RUN", value="{{ dag_run.dag_id }}-{{ ds_nodash }}"),
        ],
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "{{ params.cpu }}", "memory": "{{ params.memory }}"},
            limits={"memory": "{{ params.memory }}"},
        ),
        volumes=[
            k8s.V1Volume(
                name="{{ params.scratch }}",
                empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="{{ params.memory }}"),
            )
        ],
        volume_mounts=[
            k8s.V1VolumeMount(
                name="{{ params.scratch }}", mount_path="/scratch", sub_path="{{ ds_nodash }}"
            )
        ],
        labels={"partition": "{{ ds_nodash }}"},
        hostname="loader-{{ ds_nodash }}",
        env_from=[
            k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="{{ params.config }}"))
        ],
        kubernetes_conn_id="{{ params.conn }}",
        on_finish_action="keep_pod",
    )
    DispatcherPodOperator(
        task_id="bad_limit",
        image="registry.example.com/etl/loader:3",
        cmds=["loader"],
        container_resources=k8s.V1ResourceRequirements(limits={"memory": "{{ params.bad }}"}),
    )
