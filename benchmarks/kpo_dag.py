"""The DAG the ``kpo`` contender of ``benchmarks.compare`` runs: one KubernetesPodOperator per
task, copied into a lane's dags folder (``dag.test()`` runs only DAGs its bundle holds) and
configured by the JSON file ``KD_COMPARE_KPO_LANE`` names (keys, namespace, kubeconfig,
seconds, lane, and the file each task appends its start time to).

Parsed by Airflow like any DAG file; imports the provider (the lane needs it anyway).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

LANE = json.loads(Path(os.environ["KD_COMPARE_KPO_LANE"]).read_text())


def _began(context: Any) -> None:
    """The task's submit time: when the operator's execute starts (after Airflow's own
    start-up of the task)."""
    with Path(LANE["submitted_file"]).open("a") as out:
        out.write(json.dumps({"key": context["task"].task_id, "t": time.time()}) + "\n")


with DAG(
    dag_id=f"compare_kpo_lane_{LANE['lane']}",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
) as dag:
    for key in LANE["keys"]:
        KubernetesPodOperator(
            task_id=key,
            name=key,
            namespace=LANE["namespace"],
            image=LANE["image"],
            labels={LANE["label"]: key},
            annotations=LANE["annotations"],
            container_resources=k8s.V1ResourceRequirements(requests=LANE["requests"]),
            config_file=LANE["kubeconfig"],
            in_cluster=False,
            # The stack's simulated log follow never ends (benchmarks.contenders says why).
            get_logs=False,
            do_xcom_push=False,
            on_finish_action="delete_pod",
            on_execute_callback=_began,
        )
