"""KubernetesJobOperator's common use (``DispatcherJobOperator``): DAGs written for the
provider's operator run with only the import changed. On the stack, an admin watch on
the cluster plays each pod (KWOK runs no container: the test tells each pod how to end)
and records what the apiserver had: the Indexed Job's pods carry their index, no more
than ``parallelism`` run at once, a failed completion runs again as a new pod, and a Job
whose pods keep failing fails the task once ``backoff_limit`` is exceeded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from tests.airflow.conftest import DAGS_FOLDER, SIM, TEST_DAGS, DagRunner, fail
from tests.stack import Stack

IMPORT = "from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator"
MOVED = "from dispatcher.airflow import DispatcherJobOperator as KubernetesJobOperator"


def moved_dags() -> Path:
    """The Job DAGs with the import changed, and nothing else."""
    original = (TEST_DAGS / "kpo_job.py").read_text()
    assert original.count(IMPORT) == 1
    path = DAGS_FOLDER.parent / "kpo_job_moved.py"
    path.write_text(original.replace(IMPORT, MOVED))
    return path


@dataclass
class Seen:
    """What the admin watch saw: each pod's completion index, in creation order, and the
    most pods of the task that existed unfinished at once."""

    indexes: list[str | None] = field(default_factory=list)
    most_at_once: int = 0
    live: set[str] = field(default_factory=set)


def _index(pod: Any) -> str | None:
    [base] = [c for c in pod.spec.containers if c.name == "base"]
    return next((e.value for e in base.env or [] if e.name == "JOB_COMPLETION_INDEX"), None)


@contextmanager
def playing_pods(
    stack: Stack, namespace: str, task_id: str, ending: Callable[[Seen, Any], dict[str, str]]
) -> Iterator[Seen]:
    """Watch ``task_id``'s pods on plane; tell each new one how to end (``ending`` gives
    its annotations), and count the unfinished ones."""
    seen = Seen()
    stop = threading.Event()
    ready = threading.Event()

    def follow() -> None:
        with stack.kube("plane") as kube:
            core = client.CoreV1Api(kube)
            selector = f"task_id={task_id}"
            version = core.list_namespaced_pod(
                namespace, label_selector=selector
            ).metadata.resource_version
            ready.set()
            while not stop.is_set():
                for event in watch.Watch().stream(
                    core.list_namespaced_pod,
                    namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=2,
                ):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    name = pod.metadata.name
                    ended = pod.status.phase in ("Succeeded", "Failed")
                    if event["type"] == "ADDED" and not ended:
                        seen.indexes.append(_index(pod))
                        seen.live.add(name)
                        core.patch_namespaced_pod(
                            name, namespace, {"metadata": {"annotations": ending(seen, pod)}}
                        )
                    if ended or event["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                        seen.live.discard(name)
                    seen.most_at_once = max(seen.most_at_once, len(seen.live))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def first_try_of_index_1_fails(seen: Seen, pod: Any) -> dict[str, str]:
    if _index(pod) == "1" and seen.indexes.count("1") == 1:
        return fail("1s", exit_code=3)
    return {f"{SIM}succeed-after": "2s"}


def test_an_indexed_job_runs_each_completion_within_its_parallelism_and_backoff(
    dag_runner: DagRunner, stack: Stack, namespace: str
) -> None:
    with playing_pods(stack, namespace, "shards", first_try_of_index_1_fails) as seen:
        run = dag_runner.run(moved_dags(), "kpo_job")
    assert run.state == "success", run.log
    # Every index ran; index 1 twice (its first pod failed); never more than two at once.
    assert sorted(seen.indexes) == ["0", "1", "1", "2"], seen
    assert seen.most_at_once <= 2, seen
    assert run.lines("Completion 1 failed"), run.log
    assert "running it again (failure 1 of 1 tolerated)" in run.lines("Completion 1 failed")[0]
    assert len(run.lines("succeeded on plane")) == 3, run.log
    # The DAG asks for namespace ml-jobs, which plane does not allow: each pod says so.
    assert len(run.lines("The task asked for namespace 'ml-jobs'")) == 4, run.log


def test_a_job_whose_pods_keep_failing_fails_once_its_backoff_limit_is_exceeded(
    dag_runner: DagRunner, stack: Stack, namespace: str
) -> None:
    with playing_pods(stack, namespace, "flaky", lambda seen, pod: fail("1s", 3)) as seen:
        run = dag_runner.run(moved_dags(), "kpo_job_backoff")
    assert run.state == "failed", run.log
    assert run.task("flaky")["state"] == "failed"
    assert len(seen.indexes) == 2, seen  # the first pod and one more (backoff_limit=1)
    assert run.lines("2 pod(s) failed, more than backoff_limit=1"), run.log
