"""KubernetesPodOperator's XCom contract: ``produce`` writes a 256 KiB JSON document to
/airflow/xcom/return.json, and ``consume``, a downstream Python task, reads it as an XCom."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from dispatcher.airflow import DispatcherPodOperator

#: The container's program: a JSON document of about 256 KiB to return.json.
PRODUCE = (
    "import json; rows = [{'id': i, 'text': 'x' * 200} for i in range(1200)]; "
    "json.dump({'rows': rows}, open('/airflow/xcom/return.json', 'w'))"
)

with DAG(
    dag_id="kpo_xcom",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
) as dag:
    produce = DispatcherPodOperator(
        task_id="produce",
        name="produce",
        image="python:3.12-slim",
        cmds=["python", "-c"],
        arguments=[PRODUCE],
        do_xcom_push=True,
    )

    @task
    def consume(document: dict[str, Any]) -> dict[str, Any]:
        canonical = json.dumps(document, sort_keys=True).encode()
        return {"rows": len(document["rows"]), "sha256": hashlib.sha256(canonical).hexdigest()}

    consume(produce.output)
