"""A task whose pod comes from a pod template file next to the DAG (the provider's
``pod_template_file``), with the operator's parameters over it."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from dispatcher.airflow import DispatcherPodOperator

with DAG(
    dag_id="kpo_pod_template",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
) as dag:
    DispatcherPodOperator(
        task_id="train",
        pod_template_file="pod_templates/gpu.yaml",
        cmds=["python", "-m", "train"],
        env_vars={"DAY": "{{ ds }}"},
        labels={"run": "nightly"},
        gpu_model="A100",
        on_finish_action="keep_pod",
    )
