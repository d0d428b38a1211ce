"""Run one DAG with ``dag.test()`` in this process and print a summary (for the tests).

    python -m tests.airflow.dagrun DAG_FILE DAG_ID [--annotate TASK_ID=JSON]...
        [--logical-date ISO]

``--annotate`` adds pod annotations to a task before the run (the test stack's
``sim.dispatcher.dev/*`` annotations that make simulated pods succeed or fail), so the
example DAGs stay as a user would write them. The task log goes to stdout; the last line
is ``DAGRUN-SUMMARY {json}``: the run's state, each task instance's state and try, and
every XCom ``return_value`` and the extra links (``links``).

Airflow is configured by the environment (``AIRFLOW_HOME``, the dags folder, and
``AIRFLOW_CONN_DISPATCHER_DEFAULT``); see ``tests/airflow/conftest.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

SUMMARY = "DAGRUN-SUMMARY "


def _load_dag(path: Path, dag_id: str) -> Any:
    from airflow.sdk import DAG

    spec = importlib.util.spec_from_file_location(f"dagfile_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for value in vars(module).values():
        if isinstance(value, DAG) and value.dag_id == dag_id:
            return value
    raise SystemExit(f"no DAG {dag_id!r} in {path}")


def _annotate(dag: Any, task_id: str, annotations: dict[str, str]) -> None:
    task = dag.task_dict[task_id]
    partial = getattr(task, "partial_kwargs", None)
    if partial is not None:  # a mapped operator keeps its arguments until it is expanded
        partial["annotations"] = {**(partial.get("annotations") or {}), **annotations}
    else:
        task.annotations = {**task.annotations, **annotations}


def _summary(dag_run: Any) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = [
            {
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "state": str(ti.state),
                "try_number": ti.try_number,
            }
            for ti in dag_run.get_task_instances(session=session)
        ]
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.key == "return_value",
            )
        ).all()
        xcoms = {f"{x.task_id}[{x.map_index}]": XComModel.deserialize_value(x) for x in rows}
        # The operators' extra links, as the worker stored them for the UI.
        links: dict[str, dict[str, Any]] = {}
        for x in session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.key.startswith("_link_"),
            )
        ).all():
            links.setdefault(f"{x.task_id}[{x.map_index}]", {})[x.key] = (
                XComModel.deserialize_value(x)
            )
    return {
        "state": str(dag_run.state),
        "run_id": dag_run.run_id,
        "tasks": tis,
        "xcom": xcoms,
        "links": links,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_file", type=Path)
    parser.add_argument("dag_id")
    parser.add_argument("--annotate", action="append", default=[])
    parser.add_argument("--logical-date")
    args = parser.parse_args(argv)
    dag = _load_dag(args.dag_file, args.dag_id)
    for item in args.annotate:
        task_id, _, annotations = item.partition("=")
        _annotate(dag, task_id, json.loads(annotations))
    kwargs: dict[str, Any] = {}
    if args.logical_date:
        # The run id derives from run_after: the same date is the same run (a re-run).
        moment = datetime.fromisoformat(args.logical_date)
        kwargs.update(logical_date=moment, run_after=moment)
    dag_run = dag.test(**kwargs)
    sys.stdout.flush()
    sys.stdout.write(SUMMARY + json.dumps(_summary(dag_run), default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
