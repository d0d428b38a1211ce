"""The example DAGs run end to end: ``dag.test()`` with the real Airflow, a real
dispatcher process and the multi-cluster test stack."""

from __future__ import annotations

import json
import re

from tests.airflow.conftest import EXAMPLES, DagRunner, succeed

METRICS = {"accuracy": 0.93, "loss": 0.21}
POD_LOG = [
    "starting",  # "simulated container on <cluster>: starting"
    "step 1/3",
    "step 2/3",
    "step 3/3",
    "done",
]


def assert_once_in_order(lines: list[str]) -> None:
    """The simulated pod log, in order and each line once. (Other tests may append lines
    to a cluster's simulated log, after "done".)"""
    assert lines[1 : len(POD_LOG)] == POD_LOG[1:], lines
    assert len(set(lines)) == len(lines), lines


_POD_LINE = re.compile(r"\[base\] (.*?)\s+\[[\w.]+\]( loc=\S+)?$")


def pod_lines(log: str) -> list[str]:
    """The pod's log lines in the task log (console format: message, logger, location)."""
    return [m.group(1) for line in log.splitlines() if (m := _POD_LINE.search(line))]


def test_train_model_runs_each_step_where_its_hardware_is(dag_runner: DagRunner) -> None:
    run = dag_runner.run(
        EXAMPLES / "train_model.py",
        "train_model",
        annotate={
            "preprocess": succeed("2s"),
            "train": succeed("3s", result=json.dumps(METRICS)),
        },
    )
    assert run.state == "success", run.log
    assert run.task("train")["state"] == "success"
    # The routing decision comes first, then the pod's log, in order, each line once.
    placed = run.lines("dispatched to cluster")
    assert any("gpu-a100" in line for line in placed), run.log
    assert any("plane" in line for line in placed), run.log
    lines = pod_lines(run.log)
    assert lines.count("step 1/3") == 2, lines  # preprocess and train
    train_log = run.log[run.log.index("dispatched to cluster gpu-a100") :]
    train_lines = pod_lines(train_log)
    assert train_lines[0].endswith("gpu-a100: starting")
    assert_once_in_order(train_lines)
    # The termination message is the task's return value, and downstream reads it.
    assert run.xcom("train") == METRICS
    assert "accuracy=0.93" in str(run.xcom("report"))
