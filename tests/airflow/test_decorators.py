"""``@task.dispatcher``, ``@task.dispatcher_cmd`` and ``Secret``, with the real Airflow:
the decorators are found through ``airflow.sdk.task`` (the provider entry point), a DAG
using them parses into the task specs it should, and on the stack the pod runs the
function: its command, run here with the pod's environment, prints the function's
return value where the termination message goes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dispatcher.airflow import DispatcherPodOperator, Secret
from tests.airflow.conftest import TEST_DAGS, DagRunner, succeed
from tests.airflow.dagrun import _load_dag
from tests.airflow.test_templates import pod_of
from tests.stack import Stack

LOGICAL_DATE = datetime(2024, 6, 1, 3, 0, tzinfo=UTC)
COUNTED = {"partition": "2024-06-01", "rows": 6, "level": "info", "password_set": True}


def test_the_decorators_are_registered_through_the_provider_entry_point() -> None:
    from airflow.sdk import task

    assert task.dispatcher.__name__ == "dispatcher_task"
    assert task.dispatcher_cmd.__name__ == "dispatcher_cmd_task"


def test_a_dag_using_the_decorators_parses_into_dispatcher_task_specs() -> None:
    dag = _load_dag(TEST_DAGS / "decorated.py", "decorated")
    count_rows = dag.task_dict["count_rows"]
    assert isinstance(count_rows, DispatcherPodOperator)
    spec = count_rows.build_spec()
    assert spec["image"] == "registry.example.com/python:3.12"
    assert spec["cmds"][:2] == ["python", "-c"]
    assert spec["arguments"] == ["/dev/termination-log"]
    assert {"name": "LOG_LEVEL", "value": "info"} in spec["env_vars"]
    assert {
        "name": "DB_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "warehouse-db", "key": "password"}},
    } in spec["env_vars"]
    assert count_rows.do_xcom_push  # the function's return value is the task's
    announce = dag.task_dict["announce"]
    assert isinstance(announce, DispatcherPodOperator)
    assert announce.build_spec()["image"] == "registry.example.com/busybox:1"


def test_dispatcher_task_refuses_a_command_of_its_own() -> None:
    from airflow.sdk import DAG, task

    @task.dispatcher(image="python:3.12", cmds=["python", "x.py"])
    def f() -> None:
        return None

    with DAG(dag_id="refuses", schedule=None), pytest.raises(TypeError, match="takes no cmds"):
        f()


def test_a_refused_parameter_fails_where_the_decorator_is_mapped_or_not() -> None:
    from airflow.sdk import task
    from airflow.sdk.exceptions import AirflowException

    # A mapped decorated task (``f.expand(...)``) builds no operator until it runs, so
    # the decorator itself refuses, when the DAG is parsed.
    with pytest.raises(AirflowException) as refused:
        task.dispatcher(image="python:3.12", hostnetwork=True)
    assert "'@task.dispatcher' cannot honour" in str(refused.value)
    assert "- hostnetwork: host networking" in str(refused.value)


def pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the kubelet would set them; a secret's value is a
    stand-in (the test stack's pods are simulated: nothing reads the Secret)."""
    env = {}
    for var in container["env"] or []:
        env[var["name"]] = "stand-in" if var.get("value_from") else var["value"]
    return env


def run_container_here(container: dict[str, Any], tmp_path: Path) -> str:
    """Run the pod's command on this machine, its result path moved into ``tmp_path``."""
    result = tmp_path / "termination-log"
    command = [*container["command"], *container["args"]]
    assert command[0] == "python"
    assert command[-1] == "/dev/termination-log"
    done = subprocess.run(  # noqa: S603 - the command of a pod this test made
        [sys.executable, *command[1:-1], str(result)],
        env=pod_environment(container),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return result.read_text()


def test_decorated_tasks_run_their_function_and_their_command_in_the_pod(
    dag_runner: DagRunner, stack: Stack, namespace: str, tmp_path: Path
) -> None:
    run = dag_runner.run(
        TEST_DAGS / "decorated.py",
        "decorated",
        annotate={
            "count_rows": succeed("1s", result=json.dumps(COUNTED)),
            "announce": succeed("1s"),
            "double": succeed("1s", result="0"),
        },
        logical_date=LOGICAL_DATE,
    )
    assert run.state == "success", run.log
    assert run.xcom("count_rows") == COUNTED
    assert run.xcom("report") == "2024-06-01: 6 rows"
    # The pod the dispatcher made runs the function with its templated arguments and
    # writes its return value as JSON (the simulated pod above only pretends to).
    container = pod_of(stack, namespace, "count_rows")["spec"]["containers"][0]
    assert json.loads(run_container_here(container, tmp_path)) == COUNTED
    announce = pod_of(stack, namespace, "announce")["spec"]["containers"][0]
    assert announce["command"] == ["echo", "partition 2024-06-01 is ready"]
    assert not announce["args"]
    # Each mapped instance's pod runs the function with its own argument.
    for index, expected in ((0, 2), (1, 4)):
        assert run.task("double", index)["state"] == "success", run.log
        pod = pod_of(stack, namespace, "double", f"map_index={index}")
        assert json.loads(run_container_here(pod["spec"]["containers"][0], tmp_path)) == expected


def test_secret_takes_the_providers_arguments_and_checks_them() -> None:
    assert Secret("env", "db_password", "db", "password").deploy_target == "DB_PASSWORD"
    assert Secret("env", None, "db").key is None
    volume = Secret("volume", "/etc/tls", "tls", items=[{"key": "crt", "path": "tls.crt"}])
    spec = DispatcherPodOperator(task_id="t", image="x:1", secrets=[volume]).build_spec()
    assert {"name": "secret-0-tls", "secret": {"secretName": "tls", "items": [
        {"key": "crt", "path": "tls.crt"}
    ]}} in spec["volumes"]  # fmt: skip
    assert spec["volume_mounts"][-1]["mountPath"] == "/etc/tls"
    with pytest.raises(ValueError, match="deploy_type must be 'env' or 'volume'"):
        Secret("file", "/x", "db")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a deploy_target"):
        Secret("env", None, "db", "password")
    with pytest.raises(ValueError, match="needs a mount path"):
        Secret("volume", None, "db")
