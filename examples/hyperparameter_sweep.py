"""A hyperparameter sweep: one GPU task per learning rate (dynamic task mapping), then
the best run is picked from their results.

Each mapped task is deferrable: while its pod runs, the waiting happens in Airflow's
triggerer, which follows the job with long polls and streams the pod's log into the task
log, so a wide sweep does not hold a worker slot per GPU job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from dispatcher.airflow import DispatcherPodOperator

LEARNING_RATES = ["0.1", "0.01", "0.001"]

with DAG(
    dag_id="hyperparameter_sweep",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["kube-dispatcher", "example"],
) as dag:
    runs = DispatcherPodOperator.partial(
        task_id="train",
        image="registry.example.com/ml/trainer:2024.06",
        cmds=["python", "-m", "trainer.train", "--epochs", "3"],
        container_resources={
            "requests": {"cpu": "4", "memory": "16Gi"},
            "limits": {"memory": "16Gi"},
        },
        gpus=1,
        do_xcom_push=True,
        deferrable=True,
    ).expand(arguments=[["--learning-rate", rate] for rate in LEARNING_RATES])

    @task
    def pick_best(results: list[dict[str, Any] | None]) -> dict[str, Any]:
        scored = [r for r in results if r and "accuracy" in r]
        if not scored:
            raise ValueError("no run reported an accuracy")
        return max(scored, key=lambda r: float(r["accuracy"]))

    pick_best(runs.output)
