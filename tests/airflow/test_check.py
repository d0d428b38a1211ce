"""``dispatcher airflow check``: on the test DAGs (KPO-style ones with the provider's
import unchanged, DispatcherPodOperator ones, decorated ones), what carries over, what
becomes a routing hint or has no effect, and what is refused with why and what instead,
read from ``parameters``' groups; the exit status says whether anything is refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Set
from pathlib import Path

import pytest

from dispatcher.airflow import check, parameters
from tests.airflow.conftest import REPO, TEST_DAGS
from tests.airflow.test_isolation import BLOCK_AIRFLOW

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation


def run_check(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and CLI
        [sys.executable, "-m", "dispatcher.cli", "airflow", "check", str(target)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def section(output: str, task: str) -> list[str]:
    """The report's lines about one task (``dag_id.task_id``)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {task} ("))
    rest = lines[start + 1 :]
    end = next((i for i, line in enumerate(rest) if not line.startswith("    ")), len(rest))
    return [lines[start], *rest[:end]]


def test_the_check_of_the_test_dags_names_each_parameters_fate_and_fails_on_a_refusal() -> None:
    done = run_check(TEST_DAGS)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout

    kpo = section(out, "kpo_migration.secrets_and_init")
    assert kpo[0].endswith("(KubernetesPodOperator, checked as DispatcherPodOperator)")
    assert "    carried over: arguments, cmds, image, labels, name, namespace, secrets" in kpo
    assert "    pod field: env_from, init_containers" in kpo
    assert "in_cluster" in parameters.ROUTING_HINTS
    assert any(line.startswith("    routing hint: in_cluster: True goes to") for line in kpo)
    reason = parameters.NO_EFFECT["startup_check_interval_seconds"]
    assert f"    no effect: startup_check_interval_seconds: {reason}" in kpo
    assert not any("refused" in line for line in kpo)

    template = section(out, "kpo_migration.from_a_template")
    refusal = parameters.REFUSED["hostnetwork"]
    assert f"    refused: hostnetwork: {refusal.why}; instead: {refusal.instead}" in template
    # The template (found next to the DAG file) carries over.
    assert "    carried over: cmds, image, pod_template_file" in template
    hint = "    routing hint: kubernetes_conn_id: 'gpu_k8s' goes to"
    assert any(line.startswith(hint) for line in template)

    decorated = section(out, "decorated.count_rows")
    assert decorated[0] == "  decorated.count_rows (@task.dispatcher)"
    mapped = section(out, "decorated.double")
    assert mapped == [
        "  decorated.double (@task.dispatcher, mapped)",
        "    carried over: image, on_finish_action",
    ]
    assert section(out, "failing.oom")[-1] == "    dispatcher: gpu_model"
    # The provider's KubernetesJobOperator is checked as DispatcherJobOperator.
    job = section(out, "kpo_job.shards")
    assert job[0].endswith("(KubernetesJobOperator, checked as DispatcherJobOperator)"), job
    assert "    carried over: cmds, image, name, namespace" in job, job
    # Only from_a_template is refused.
    assert out.splitlines()[-1].endswith(
        " dispatcher tasks: 1 with refused parameters or an invalid spec, 0 files that do not parse"
    ), out


def test_a_dag_with_nothing_refused_passes() -> None:
    done = run_check(TEST_DAGS / "kpo_seed.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kpo_seed.embed (KubernetesPodOperator, checked as DispatcherPodOperator)" in done.stdout


def test_an_invalid_spec_and_a_file_that_does_not_parse_fail_the_check(tmp_path: Path) -> None:
    (tmp_path / "bad_spec.py").write_text(
        "from airflow.sdk import DAG\n"
        "from dispatcher.airflow import DispatcherPodOperator\n"
        "with DAG(dag_id='bad_spec', schedule=None):\n"
        "    DispatcherPodOperator(task_id='t', image='x:1',\n"
        "                          container_resources={'limits': {'memory': 'lots'}})\n"
    )
    (tmp_path / "broken.py").write_text("from airflow.sdk import DAG\nraise RuntimeError('no')\n")
    done = run_check(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "    invalid spec: 't': invalid task spec in task t (1 problem):" in done.stdout
    assert "container_resources.limits.memory: not a Kubernetes quantity" in done.stdout
    assert "  does not parse: RuntimeError: no (at " in done.stdout


def test_every_group_of_parameters_has_a_label_in_the_report() -> None:
    """A group added to ``parameters`` must be given a place in the report: every
    collection of parameter names it exports is a group the check knows, or a union of
    such groups."""
    groups = {name: set(getattr(parameters, name)) for name in check.GROUP_LABELS}
    for name in parameters.__all__:
        value = getattr(parameters, name)
        if not name.isupper() or not isinstance(value, Mapping | Set) or name in groups:
            continue
        assert set(value) <= set().union(*groups.values()), f"{name} is in no labelled group"


def test_without_airflow_the_check_says_what_to_install() -> None:
    script = BLOCK_AIRFLOW + (
        "from dispatcher.airflow.check import main\n"
        f"raise SystemExit(main([{str(TEST_DAGS / 'kpo_seed.py')!r}]))\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'kube-dispatcher[airflow]'" in done.stderr
