"""Fair share in the simulated world: a whole-node task is not starved by a stream of
small ones (issue 16 item 3), judged by the pods the world's cluster really got.

The world has one cluster of two 16-GPU nodes; two 1-GPU tasks arrive every second, each
running 6 s (about 13 of the 32 GPUs busy, spread over both nodes by the scheduler's
least-allocated scoring, so neither node ever empties by itself). A 16-GPU task arrives
among them. The real ``Dispatcher`` drives it all, with the fake clock.
"""

from __future__ import annotations

from typing import Any

from dispatcher import metrics
from dispatcher.core import ClusterInfo, PodDefaults, TaskSpec, parse_task_spec
from dispatcher.core.fairshare import FairShareSettings
from tests.simulation.harness import Simulation
from tests.simulation.world import (
    A100,
    GPU_TOLERATION,
    NAMESPACE,
    SUCCEED_AFTER,
    ClusterSpec,
    _node,
)

BIG_AT = 10
HORIZON = 120
#: The big job as the API showed it while it waited (the last run's).
QUEUE_VIEWS: list[dict[str, Any]] = []


def topology() -> tuple[ClusterSpec, ...]:
    defaults = PodDefaults.model_validate(
        {"namespace": NAMESPACE, "gpu_tolerations": [GPU_TOLERATION]}
    )
    return (
        ClusterSpec(
            ClusterInfo(name="gpu-a100", pod_defaults=defaults),
            tuple(
                _node(f"a100-{i}", cpu="96", memory="1000Gi", gpus=16, model=A100) for i in range(2)
            ),
        ),
    )


def gpu_task(key: str, gpus: int, seconds: int, deadline: int | None) -> TaskSpec:
    fields: dict[str, Any] = {
        "image": "busybox:1.36",
        "name": key,
        "idempotency_key": key,
        "annotations": {SUCCEED_AFTER: f"{seconds}s"},
        "container_resources": {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"nvidia.com/gpu": str(gpus)},
        },
        "requirements": {"gpu_model": "a100"},
    }
    if deadline is not None:
        fields["active_deadline_seconds"] = deadline
    return parse_task_spec(fields)


def run_stream(
    fair_share: FairShareSettings,
) -> tuple[Simulation, str, float | None, list[float]]:
    """Small tasks every second until ``HORIZON``, the big one at ``BIG_AT``; when the
    world got the big task's pod (``None``: never while small ones kept arriving), and
    when it got each other pod (seconds from the start)."""
    sim = Simulation(topology=topology(), fair_share=fair_share)
    QUEUE_VIEWS.clear()
    start = sim.world.clock()
    big = None
    for second in range(HORIZON):
        for k in range(2):
            sim.submit(gpu_task(f"small-{second}-{k}", 1, 6, deadline=10))
        if second == BIG_AT:
            big = sim.submit(gpu_task("big", 16, 5, deadline=None))
        sim.run_for(1)
        leader = sim.leader()
        if big is not None and leader is not None and sim.state(big.job_id) == "queued":
            QUEUE_VIEWS.append(leader.dispatcher.get(big.job_id))
    assert big is not None
    created = [c.at - start for c in sim.world.created if c.job_id == big.job_id]
    others = [c.at - start for c in sim.world.created if c.job_id != big.job_id]
    return sim, big.job_id, (created[0] if created else None), others


def test_a_16_gpu_task_gets_its_node_while_1_gpu_tasks_keep_arriving() -> None:
    sim, _, created, others = run_stream(FairShareSettings())
    assert created is not None, "the 16-GPU task never got a pod while small ones arrived"
    # Reserved when it first waits; the small tasks there (10 s deadlines) end within
    # 10 s of the reservation, later ones backfill elsewhere or end before it.
    assert created <= BIG_AT + 12, created
    # Small tasks went on running meanwhile (they were not all held back).
    assert sum(1 for at in others if BIG_AT <= at <= created) >= 10
    # While it waited, the API said what for, and which node is reserved for it.
    assert QUEUE_VIEWS
    queue = QUEUE_VIEWS[-1]["queue"]
    assert queue["waiting_for"].startswith("16 a100 GPUs on one node; largest free block ")
    assert queue["reservation"]["cluster"] == "gpu-a100"
    assert "is reserved for it" in QUEUE_VIEWS[-1]["reason"]
    sim.settle()
    sim.check_final()


def test_without_reservations_the_16_gpu_task_starves_in_the_same_stream() -> None:
    _, _, created, _ = run_stream(FairShareSettings(reservations=False))
    assert created is None


def test_tenant_metrics_name_configured_tenants_only_and_show_quota_usage_and_waits() -> None:
    """Quota holds on requirements.queue (no authentication in the simulation); a queue
    name nobody configured counts as the default tenant, so labels stay bounded."""
    fair_share = FairShareSettings.model_validate(
        {"tenants": {"team-a": {"quota": {"gpus": {"a100": 1}}}}}
    )
    sim = Simulation(topology=topology(), fair_share=fair_share)

    def queued(key: str, queue: str) -> TaskSpec:
        spec = gpu_task(key, 1, 60, deadline=None)
        requirements = spec.requirements.model_copy(update={"queue": queue})
        return spec.model_copy(update={"requirements": requirements})

    first = sim.submit(queued("a-1", "team-a"))
    second = sim.submit(queued("a-2", "team-a"))
    sim.submit(queued("x-1", "nobody-configured-this"))
    sim.run_for(3)
    assert sim.pods_created(first.job_id)
    assert not sim.pods_created(second.job_id)  # over team-a's quota of 1 A100
    stored = sim.world.store.peek(second.job_id)
    assert stored is not None

    def sample(name: str, **labels: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, labels)

    assert sample("dispatcher_tenant_usage", tenant="team-a", pool=f"gpu/{A100}") == 1
    assert sample("dispatcher_tenant_usage", tenant="default", pool=f"gpu/{A100}") == 1
    assert sample("dispatcher_tenant_quota", tenant="team-a", pool="gpu/a100") == 1
    assert sample("dispatcher_tenant_waiting_jobs", tenant="team-a") == 1
    assert sample("dispatcher_tenant_waiting_jobs", tenant="default") == 0
    oldest = sample("dispatcher_tenant_oldest_wait_seconds", tenant="team-a")
    assert oldest is not None
    assert oldest >= 2
    tenants = {
        s.labels["tenant"]
        for metric in metrics.REGISTRY.collect()
        if metric.name.startswith("dispatcher_tenant")
        for s in metric.samples
    }
    assert tenants == {"team-a", "default"}
