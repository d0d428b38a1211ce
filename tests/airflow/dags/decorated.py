"""TaskFlow tasks in containers, as ``@task.kubernetes`` and ``@task.kubernetes_cmd`` DAGs
write them with the decorator renamed: a function that runs in the container and returns
a value a downstream task reads, a function that returns the container's command, a
mapped function, and a ``Secret`` from ``dispatcher.airflow`` (no cncf.kubernetes
provider needed)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from dispatcher.airflow import Secret

with DAG(
    dag_id="decorated",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"retries": 0},
) as dag:

    @task.dispatcher(
        image="registry.example.com/python:3.12",
        secrets=[Secret("env", "db_password", "warehouse-db", "password")],
        env_vars={"LOG_LEVEL": "info"},
        on_finish_action="keep_pod",
    )
    def count_rows(partition: str, scale: int = 1) -> dict[str, Any]:
        import os  # runs in the container: imports go inside the function

        return {
            "partition": partition,
            "rows": 3 * scale,
            "level": os.environ["LOG_LEVEL"],
            "password_set": "DB_PASSWORD" in os.environ,
        }

    @task.dispatcher_cmd(image="registry.example.com/busybox:1", on_finish_action="keep_pod")
    def announce(partition: str) -> list[str]:
        return ["echo", f"partition {partition} is ready"]

    @task
    def report(counted: dict[str, Any]) -> str:
        return f"{counted['partition']}: {counted['rows']} rows"

    @task.dispatcher(image="registry.example.com/python:3.12", on_finish_action="keep_pod")
    def double(x: int) -> int:
        return 2 * x

    counted = count_rows("{{ ds }}", scale=2)
    report(counted)
    counted >> announce("{{ ds }}")
    double.expand(x=[1, 2])
