"""DAGs written for the provider's KubernetesJobOperator (the test changes only the
import): an Indexed Job of three completions, two at a time, that tolerates one failed
pod; and a Job whose pods always fail, which exhausts its backoff limit."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.sdk import DAG

with DAG(dag_id="kpo_job", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    KubernetesJobOperator(
        task_id="shards",
        name="shards",
        namespace="ml-jobs",
        image="python:3.12-slim",
        cmds=["python", "-c", "import os; print('shard', os.environ['JOB_COMPLETION_INDEX'])"],
        completions=3,
        parallelism=2,
        completion_mode="Indexed",
        backoff_limit=1,
        wait_until_job_complete=True,
        ttl_seconds_after_finished=300,
        in_cluster=True,
    )

with DAG(
    dag_id="kpo_job_backoff", schedule=None, start_date=datetime(2024, 1, 1), catchup=False
) as backoff_dag:
    KubernetesJobOperator(
        task_id="flaky",
        name="flaky",
        image="python:3.12-slim",
        cmds=["python", "-c", "raise SystemExit(3)"],
        backoff_limit=1,
        wait_until_job_complete=True,
        in_cluster=True,
    )
