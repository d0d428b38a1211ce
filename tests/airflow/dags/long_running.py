"""One GPU task that runs for a while: for killing its worker, and killing the task."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from dispatcher.airflow import DispatcherPodOperator

with DAG(
    dag_id="long_running",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 1},
) as dag:
    DispatcherPodOperator(
        task_id="train",
        image="registry.example.com/ml/trainer:2024.06",
        cmds=["python", "-m", "trainer.train", "--epochs", "100"],
        gpus=1,
        poll_interval=1,
    )
