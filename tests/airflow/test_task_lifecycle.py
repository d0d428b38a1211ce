"""What a DAG author sees when tasks fail, defer, lose their worker or are killed:
``dag.test()`` with the real Airflow against a dispatcher process on the test stack."""

from __future__ import annotations

import difflib
import json
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from dispatcher.client import DispatcherClient
from tests.airflow.conftest import DAGS_FOLDER, EXAMPLES, TEST_DAGS, DagRunner, fail, succeed
from tests.airflow.test_example_dags import POD_LOG, assert_once_in_order, pod_lines
from tests.stack import Stack

CLUSTERS = ("plane", "gpu-a100", "gpu-h100")


def pods(stack: Stack, namespace: str) -> list[tuple[str, str]]:
    found = []
    for cluster in CLUSTERS:
        with stack.kube(cluster) as kube:
            for pod in client.CoreV1Api(kube).list_namespaced_pod(namespace).items:
                if pod.metadata.deletion_timestamp is None:
                    found.append((cluster, pod.metadata.name))
    return found


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_failing_task_fails_with_the_dispatchers_classification(dag_runner: DagRunner) -> None:
    run = dag_runner.run(
        TEST_DAGS / "failing.py",
        "failing",
        annotate={
            "oom": fail("2s", exit_code=137, reason="OOMKilled"),
            "nothing_to_do": fail("1s", exit_code=3),
        },
    )
    assert run.task("oom")["state"] == "failed", run.log
    errors = run.lines("OOMKilled on gpu-a100 after ")
    assert errors, run.log
    assert "exceeded memory limit 3Gi (exit code 137)" in errors[0]
    assert "failure: oom-killed" in errors[0]
    # skip_on_exit_code: exit code 3 skips the task instead of failing it.
    assert run.task("nothing_to_do")["state"] == "skipped", run.log


def test_a_deferred_mapped_sweep_resumes_and_succeeds(dag_runner: DagRunner) -> None:
    result = {"accuracy": 0.9, "lr": "sweep"}
    run = dag_runner.run(
        EXAMPLES / "hyperparameter_sweep.py",
        "hyperparameter_sweep",
        annotate={"train": succeed("3s", result=json.dumps(result))},
    )
    assert run.state == "success", run.log
    assert "[DAG TEST] running trigger in line" in run.log
    for index in range(3):
        assert run.task("train", index)["state"] == "success"
        assert run.xcom("train", index) == result
    assert run.xcom("pick_best") == result
    # The trigger streamed each pod's log; the resumed task logged none of it again.
    lines = pod_lines(run.log)
    for line in POD_LOG[1:]:
        assert lines.count(line) == 3, lines
    assert len(run.lines("dispatched to cluster gpu-")) == 3


# The DAG imports the provider's operator before the swap: provider-dependent.
@pytest.mark.generation
def test_a_dag_written_for_kubernetes_pod_operator_runs_after_swapping_the_class(
    dag_runner: DagRunner,
) -> None:
    original = (TEST_DAGS / "kpo_seed.py").read_text()
    moved = original.replace(
        "from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator",
        "from dispatcher.airflow import DispatcherPodOperator",
    ).replace("KubernetesPodOperator(", "DispatcherPodOperator(")
    changed = [
        line
        for line in difflib.unified_diff(original.splitlines(), moved.splitlines(), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert len(changed) == 4, changed  # two lines out, two lines in
    dag_file = DAGS_FOLDER.parent / "kpo_seed_moved.py"
    dag_file.write_text(moved)
    run = dag_runner.run(dag_file, "kpo_seed", annotate={"embed": succeed("2s")})
    assert run.state == "success", run.log
    assert run.lines("dispatched to cluster gpu-"), run.log
    # The stack's clusters do not allow the DAG's namespace: the task log says where the
    # pod runs instead, right after the placement.
    [notice] = run.lines("The task asked for namespace 'ml-jobs'")
    assert "its pod runs in 't-" in notice, notice
    assert_once_in_order(pod_lines(run.log))


def test_a_rerun_after_the_worker_died_reattaches_to_the_running_job(
    dag_runner: DagRunner,
    api: DispatcherClient,
    stack: Stack,
    namespace: str,
    logical_date: Callable[[], datetime],
) -> None:
    when = logical_date()
    dag_file = TEST_DAGS / "long_running.py"
    annotate = {"train": succeed("25s")}
    worker, first_log = dag_runner.start(
        dag_file, "long_running", annotate=annotate, logical_date=when
    )
    try:
        job = wait_until(
            lambda: next((j for j in api.jobs() if j["state"] == "running"), None),
            "the job running",
            timeout=90,
        )
    finally:
        worker.send_signal(signal.SIGKILL)  # the worker dies; its pod runs on
        worker.wait(10)
    assert "Submitted job" in first_log.read_text()
    again, again_log = dag_runner.start(
        dag_file, "long_running", annotate=annotate, logical_date=when
    )
    try:
        wait_until(
            lambda: (
                f"job {job['id']}" in again_log.read_text() and "Re-attach" in again_log.read_text()
            ),
            "the re-run to re-attach",
            timeout=90,
        )
        assert [j["id"] for j in api.jobs()] == [job["id"]]
        assert len(pods(stack, namespace)) == 1
        again.wait(120)
    finally:
        again.kill()
    run = DagRunner._result(again.returncode, again_log.read_text(), "long_running")
    assert run.task("train")["state"] == "success", run.log
    assert run.lines(f"Job {job['id']} succeeded")


def test_killing_the_task_cancels_the_job_and_removes_its_pod(
    dag_runner: DagRunner,
    api: DispatcherClient,
    stack: Stack,
    namespace: str,
    tmp_path: Path,
) -> None:
    worker, log = dag_runner.start(
        TEST_DAGS / "long_running.py", "long_running", annotate={"train": succeed("300s")}
    )
    try:
        job = wait_until(
            lambda: next((j for j in api.jobs() if j["state"] == "running"), None),
            "the job running",
            timeout=90,
        )
        assert len(pods(stack, namespace)) == 1
        worker.send_signal(signal.SIGTERM)  # what a worker does to a task it kills
        wait_until(lambda: pods(stack, namespace) == [], "the pod removed", timeout=30)
        assert api.get(job["id"])["state"] == "cancelled"
        wait_until(lambda: f"Cancelled job {job['id']}" in log.read_text(), "on_kill's report")
    finally:
        worker.kill()
        worker.wait(10)
