"""A DAG as written for KubernetesPodOperator (not run as is: the test swaps the import
and the class name for DispatcherPodOperator and changes nothing else)."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

with DAG(
    dag_id="kpo_seed",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
) as dag:
    embed = KubernetesPodOperator(
        task_id="embed",
        name="embed-documents",
        namespace="ml-jobs",
        image="registry.example.com/search/embedder:1.4",
        cmds=["python", "-m", "embedder"],
        arguments=["--partition", "{{ ds }}", "--batch-size", "512"],
        labels={"team": "search", "cost-center": "cc-1234"},
        get_logs=True,
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "2", "memory": "4Gi"},
            limits={"memory": "4Gi", "nvidia.com/gpu": "1"},
        ),
        image_pull_secrets=[k8s.V1LocalObjectReference(name="registry-credentials")],
    )
