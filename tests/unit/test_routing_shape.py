"""Jobs share one routing decision per cycle only when they ask routing the same thing."""

from __future__ import annotations

import pytest

from dispatcher.dispatching.cycle import routing_shape
from dispatcher.dispatching.jobs import Job
from tests.unit.factories import task

BASE = {"container_resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}

#: Fields routing reads, each with a value that asks for something else.
DIFFERENT = {
    "container_resources": {"requests": {"cpu": "2", "memory": "1Gi"}},
    "node_selector": {"disk": "ssd"},
    "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
    "requirements": {"region": "eu-west-1"},
    "namespace": "other",
    "init_containers": [
        {"name": "prep", "image": "busybox:1.36", "resources": {"requests": {"cpu": "8"}}}
    ],
}


def job(**fields: object) -> Job:
    return Job(id="j", spec=task(**{**BASE, **fields}), submitted_at=0.0)


@pytest.mark.parametrize("field", sorted(DIFFERENT))
def test_a_job_asking_for_something_else_gets_its_own_decision(field: str) -> None:
    assert routing_shape(job(**{field: DIFFERENT[field]})) != routing_shape(job())


def test_jobs_differing_only_in_what_routing_ignores_share_a_decision() -> None:
    assert routing_shape(job(name="a", image="x:1")) == routing_shape(job(name="b", image="y:2"))
