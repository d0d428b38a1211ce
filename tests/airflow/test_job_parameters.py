"""``DispatcherJobOperator``'s parameters, checked when the DAG is parsed: every
KubernetesJobOperator parameter (the installed provider's, or 10.25's) has a fate, the
Job's shape comes from the parameters over the Job template over Kubernetes' defaults,
and what cannot work is refused with why and what instead. No stack, no dispatcher."""

from __future__ import annotations

import inspect
import runpy
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException

from dispatcher.airflow import DispatcherJobOperator
from dispatcher.airflow.job import (
    DEFAULT_BACKOFF_LIMIT,
    JOB_CARRIED_OVER,
    JOB_NO_EFFECT,
    JOB_REFUSED,
)

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

#: KubernetesJobOperator's own parameters in provider 10.25 (beyond KPO's).
PINNED_KJO_PARAMETERS = {
    "job_template_file", "full_job_spec", "backoff_limit", "completion_mode", "completions",
    "manual_selector", "parallelism", "selector", "suspend", "ttl_seconds_after_finished",
    "wait_until_job_complete", "job_poll_interval", "deferrable", "on_kill_propagation_policy",
    "discover_pods_retry_number", "unwrap_single",
}  # fmt: skip


def _installed_kjo_parameters() -> set[str] | None:
    try:
        from airflow.providers.cncf.kubernetes.operators.job import (
            KubernetesJobOperator,
        )
    except ImportError:
        return None
    own = set(inspect.signature(KubernetesJobOperator.__init__).parameters)
    return own - {"self", "args", "kwargs"}


KJO_PARAMETERS = _installed_kjo_parameters() or PINNED_KJO_PARAMETERS

JOB_TEMPLATE = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: shards
spec:
  completions: 4
  parallelism: 2
  completionMode: Indexed
  backoffLimit: 2
  template:
    metadata:
      labels: {team: search}
    spec:
      restartPolicy: Never
      containers:
        - name: base
          image: ghcr.io/example/shard:1.0
          command: [python, -m, shard]
"""


def test_every_kubernetes_job_operator_parameter_has_a_fate() -> None:
    groups = [set(JOB_CARRIED_OVER), set(JOB_NO_EFFECT), set(JOB_REFUSED)]
    # deferrable is KubernetesPodOperator's too, and refused here when it asks for deferral.
    fated = set().union(*groups) | {"deferrable"}
    assert sorted(KJO_PARAMETERS - fated) == []
    assert sum(len(g) for g in groups) == len(set().union(*groups)), "a parameter twice"
    signature = set(inspect.signature(DispatcherJobOperator.__init__).parameters)
    assert set(JOB_CARRIED_OVER) <= signature


def test_the_jobs_shape_comes_from_the_parameters_over_the_template(tmp_path: Path) -> None:
    template = tmp_path / "job.yaml"
    template.write_text(JOB_TEMPLATE)
    from_template = DispatcherJobOperator(
        task_id="t", job_template_file=str(template), wait_until_job_complete=True
    )
    assert from_template.job_shape() == (4, 2, True, 2)
    spec = from_template.build_spec()
    assert spec["image"] == "ghcr.io/example/shard:1.0"
    assert spec["cmds"] == ["python", "-m", "shard"]
    assert spec["labels"] == {"team": "search"}
    over = DispatcherJobOperator(
        task_id="t",
        job_template_file=str(template),
        full_job_spec={"spec": {"parallelism": 3}},
        completions=6,
        image="ghcr.io/example/shard:2.0",
        wait_until_job_complete=True,
    )
    assert over.job_shape() == (6, 3, True, 2)
    assert over.build_spec()["image"] == "ghcr.io/example/shard:2.0"
    plain = DispatcherJobOperator(task_id="t", image="busybox")
    assert plain.job_shape() == (1, 1, False, DEFAULT_BACKOFF_LIMIT)


def test_a_relative_job_template_is_found_next_to_the_dag_file(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB_TEMPLATE)
    dag_file = tmp_path / "job_dag.py"
    dag_file.write_text(
        "from airflow.sdk import DAG\n"
        "from dispatcher.airflow import DispatcherJobOperator\n"
        "with DAG(dag_id='j', schedule=None) as dag:\n"
        "    DispatcherJobOperator(task_id='t', job_template_file='job.yaml',\n"
        "                          wait_until_job_complete=True)\n"
    )
    dag = runpy.run_path(str(dag_file))["dag"]
    assert dag.get_task("t").build_spec()["image"] == "ghcr.io/example/shard:1.0"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"suspend": True}, "suspend: the dispatcher queues each pod"),
        ({"selector": {"matchLabels": {"a": "b"}}}, "selector: pods are found by"),
        ({"deferrable": True}, "deferrable=True is not supported"),
        ({"completions": 3}, "completions=3 exceeds parallelism=1, and with "),
        (
            {"completions": 2, "parallelism": 2, "completion_mode": "indexed"},
            "completion_mode must be 'NonIndexed' or 'Indexed', not 'indexed'",
        ),
        ({"backoff_limit": -1}, "backoff_limit must be an integer of at least 0, not -1"),
    ],
)
def test_what_cannot_work_is_refused_when_the_dag_is_parsed(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(AirflowException) as refused:
        DispatcherJobOperator(task_id="t", image="busybox", **kwargs)
    assert message in str(refused.value)


def test_values_that_ask_for_nothing_and_tuning_knobs_are_accepted() -> None:
    operator = DispatcherJobOperator(
        task_id="t",
        image="busybox",
        suspend=False,
        manual_selector=None,
        ttl_seconds_after_finished=60,
        job_poll_interval=5,
        on_kill_propagation_policy="Background",
        discover_pods_retry_number=5,
        deferrable=False,
    )
    assert operator.job_shape() == (1, 1, False, DEFAULT_BACKOFF_LIMIT)
