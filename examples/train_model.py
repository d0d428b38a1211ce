"""Preprocess on CPUs, train on two A100s, report the metrics: one DAG, three steps.

The two pod steps are KubernetesPodOperator-style tasks; kube-dispatcher picks the
cluster: the preprocessing step goes wherever CPUs are free, the training step to a
cluster with two free A100s. The training container writes its metrics as JSON to
/dev/termination-log, and with ``do_xcom_push=True`` they are the task's return value.

Needs a connection ``dispatcher_default`` of type ``dispatcher``, e.g.
``AIRFLOW_CONN_DISPATCHER_DEFAULT='{"conn_type": "dispatcher",
"host": "https://kube-dispatcher.platform.svc:8080", "password": "<token>"}'``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

from dispatcher.airflow import DispatcherPodOperator

IMAGE = "registry.example.com/ml/trainer:2024.06"

with DAG(
    dag_id="train_model",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["kube-dispatcher", "example"],
) as dag:
    preprocess = DispatcherPodOperator(
        task_id="preprocess",
        image=IMAGE,
        cmds=["python", "-m", "trainer.preprocess"],
        arguments=["--date", "{{ ds }}", "--out", "s3://datasets/clean/{{ ds }}"],
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "4", "memory": "8Gi"}, limits={"memory": "8Gi"}
        ),
        labels={"team": "ml-platform"},
    )

    train = DispatcherPodOperator(
        task_id="train",
        image=IMAGE,
        cmds=["python", "-m", "trainer.train"],
        arguments=["--data", "s3://datasets/clean/{{ ds }}", "--epochs", "10"],
        env_vars={"NCCL_DEBUG": "WARN"},
        container_resources={
            "requests": {"cpu": "8", "memory": "32Gi"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"},
        },
        gpu_model="A100",
        do_xcom_push=True,
        active_deadline_seconds=6 * 3600,
    )

    @task
    def report(metrics: dict[str, Any] | None) -> str:
        """Downstream tasks read the training result like any XCom."""
        summary = ", ".join(f"{k}={v}" for k, v in sorted((metrics or {}).items()))
        return f"trained: {summary or 'no metrics'}"

    preprocess >> train
    report(train.output)
