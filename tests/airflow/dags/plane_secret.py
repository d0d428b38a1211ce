"""A GPU task whose registry Secret exists only in the in-plane namespace: a cluster whose
copy policy allows it gets a copy (tests/airflow/test_copies_in_the_task_log.py)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG
from kubernetes.client import models as k8s

from dispatcher.airflow import DispatcherPodOperator

with DAG(
    dag_id="plane_secret",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
) as dag:
    DispatcherPodOperator(
        task_id="train",
        image="registry.example.com/ml/trainer:2024.06",
        cmds=["python", "-m", "trainer.train"],
        gpus=1,
        image_pull_secrets=[k8s.V1LocalObjectReference(name="plane-only-registry")],
        poll_interval=1,
    )
