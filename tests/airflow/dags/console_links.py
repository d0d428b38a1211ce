"""A GPU task whose job is kept (not acknowledged), so its console page can be opened."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from dispatcher.airflow import DispatcherPodOperator

with DAG(
    dag_id="console_links",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
) as dag:
    DispatcherPodOperator(
        task_id="train",
        image="registry.example.com/ml/trainer:2024.06",
        cmds=["python", "-m", "trainer.train"],
        container_resources={"limits": {"nvidia.com/gpu": "2"}},
        gpu_model="H100",
        acknowledge=False,
    )
