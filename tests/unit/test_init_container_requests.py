"""Init containers count as the scheduler counts them, the same way for a task spec
(``TaskSpec.requests``) and for a pod seen in a cluster (``snapshot.pod_requests``)."""

from __future__ import annotations

from dispatcher.core.quantity import pod_requests_with_init
from dispatcher.core.snapshot import pod_requests
from tests.unit.factories import task


def test_an_init_container_raises_the_sum_only_where_it_is_larger() -> None:
    total = pod_requests_with_init(
        {"cpu": 1000, "memory": 8}, [({"cpu": 4000, "memory": 1}, False)]
    )
    assert total == {"cpu": 4000, "memory": 8}


def test_a_sidecar_runs_alongside_what_comes_after_it() -> None:
    total = pod_requests_with_init({"cpu": 1000}, [({"cpu": 500}, True), ({"cpu": 3000}, False)])
    # The sidecar adds to the sum (1500) and runs during the later init container (3500).
    assert total == {"cpu": 3500}
    assert pod_requests_with_init({"cpu": 1000}, [({"cpu": 500}, True)]) == {"cpu": 1500}


def test_a_task_spec_and_its_pod_reserve_the_same() -> None:
    init = [
        {
            "name": "side",
            "image": "b:1",
            "restart_policy": "Always",
            "resources": {"requests": {"cpu": "500m"}},
        },
        {"name": "prep", "image": "b:1", "resources": {"requests": {"cpu": "3"}}},
    ]
    spec = task(container_resources={"requests": {"cpu": "1"}}, init_containers=init)
    pod = {
        "spec": {
            "containers": [{"resources": {"requests": {"cpu": "1"}}}],
            "initContainers": [
                {"restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                {"resources": {"requests": {"cpu": "3"}}},
            ],
        }
    }
    assert spec.requests["cpu"] == pod_requests(pod)["cpu"] == 3500
