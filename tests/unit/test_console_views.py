"""The console's pure parts: which DAG a job belongs to, the filters, where sign-in goes."""

from __future__ import annotations

import pytest

from dispatcher.api.console.routes import _safe_next
from dispatcher.api.console.views import (
    CPU_POOL,
    QueueEntry,
    Waiting,
    dag_of,
    job_filter,
    pool_of,
    queue_per_pool,
)
from dispatcher.core import parse_task_spec
from dispatcher.errors import InputError

BASE = {"name": "t", "image": "python:3.12"}


def test_the_dag_comes_from_the_operator_label_or_else_the_idempotency_key() -> None:
    labelled = parse_task_spec({**BASE, "labels": {"dag_id": "nightly"}})
    keyed = parse_task_spec({**BASE, "idempotency_key": "airflow/train/step/-1/1/manual__x"})
    hashed = parse_task_spec({**BASE, "idempotency_key": "airflow/sha256/abc"})
    plain = parse_task_spec({**BASE, "idempotency_key": "mine"})
    assert [dag_of(s) for s in (labelled, keyed, hashed, plain)] == ["nightly", "train", None, None]


def test_a_bad_filter_is_refused_naming_each_field() -> None:
    with pytest.raises(InputError) as caught:
        job_filter("sleeping", "x" * 300, None, None)
    assert [p.field for p in caught.value.problems] == ["state", "cluster"]
    assert job_filter("", None, "team-a", "").query() == {"tenant": "team-a"}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/jobs/abc?x=1", "/ui/jobs/abc?x=1"),
        ("https://evil.example/ui/jobs", "/ui/jobs"),
        ("//evil.example/ui/", "/ui/jobs"),
        ("/v1/jobs", "/ui/jobs"),
        (None, "/ui/jobs"),
    ],
)
def test_sign_in_returns_only_to_a_console_page_of_this_origin(
    target: str | None, expected: str
) -> None:
    assert _safe_next(target) == expected


def test_queue_per_pool_counts_each_waiting_job_once_per_cluster_it_waits_for() -> None:
    gpu = parse_task_spec(
        {
            **BASE,
            "container_resources": {"limits": {"nvidia.com/gpu": "8"}},
            "requirements": {"gpu_model": "H100"},
        }
    )
    assert pool_of(gpu) == "gpu:H100"
    assert pool_of(parse_task_spec(BASE)) == CPU_POOL

    def entry(n: int, pool: str, *clusters: str) -> QueueEntry:
        return QueueEntry(
            n, f"j{n}", None, None, 0, 0.0, pool, "", tuple(Waiting(c, "full") for c in clusters)
        )

    counts = queue_per_pool(
        [
            entry(1, "gpu:H100", "gpu-h100"),
            entry(2, "gpu:H100", "gpu-h100"),
            entry(3, "cpu", "a", "b"),
        ]
    )
    assert counts == {"gpu-h100": {"gpu:H100": 2}, "a": {"cpu": 1}, "b": {"cpu": 1}}
