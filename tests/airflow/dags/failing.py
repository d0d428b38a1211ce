"""Tasks that do not succeed: an OOM-killed GPU task, and a task whose exit code says
"skip"."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from dispatcher.airflow import DispatcherPodOperator

with DAG(
    dag_id="failing",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
) as dag:
    DispatcherPodOperator(
        task_id="oom",
        image="registry.example.com/ml/trainer:2024.06",
        cmds=["python", "-m", "trainer.train"],
        container_resources={"limits": {"memory": "3Gi", "nvidia.com/gpu": "1"}},
        gpu_model="A100",
    )
    DispatcherPodOperator(
        task_id="nothing_to_do",
        image="registry.example.com/etl/loader:3",
        cmds=["loader", "--if-new"],
        skip_on_exit_code=3,
    )
