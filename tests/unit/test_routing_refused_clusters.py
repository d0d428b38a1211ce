"""A refused cluster can run nothing until someone fixes its credential: routing rejects
what only it could run, says "refused: <reason>", and still waits for other clusters."""

from __future__ import annotations

from dispatcher.clusters import HealthMachine, HealthPolicy, HealthReason
from dispatcher.core import ClusterState, Health, NodeInfo, Reason, Verdict, route
from dispatcher.core.snapshot import ClusterRefusal
from dispatcher.errors import RefusalReason

from .factories import H100, gpu_node, gpu_task, info, snapshot

WHY = ClusterRefusal(
    RefusalReason.SERVER_MISMATCH,
    "kubeconfig rejected: server https://a is not the pinned https://h",
)


def refused_h100() -> ClusterState:
    return ClusterState.build(info("gpu-h100"), health=Health.REFUSED, refusal=WHY)


def test_a_task_only_a_refused_cluster_could_run_is_rejected_with_the_refusal() -> None:
    decision = route(gpu_task(1, model="H100"), snapshot(refused_h100()))
    assert decision.verdict is Verdict.REJECT
    verdict = decision.explain("gpu-h100")
    assert verdict is not None
    assert (verdict.verdict, verdict.reason) == (Verdict.REJECT, Reason.CLUSTER_REFUSED)
    assert verdict.message == f"refused: {WHY}"
    assert f"gpu-h100: refused: {WHY}" in decision.message()


def test_a_refused_cluster_that_once_had_nodes_is_still_rejected_not_waited_for() -> None:
    known = ClusterState.build(
        info("gpu-h100"),
        health=Health.REFUSED,
        nodes=[NodeInfo.from_k8s(gpu_node("h-0", model=H100))],
        refusal=WHY,
    )
    assert route(gpu_task(1, model="H100"), snapshot(known)).verdict is Verdict.REJECT


def test_other_clusters_are_still_waited_for() -> None:
    down_a100 = ClusterState.build(info("gpu-a100"), health=Health.DOWN)
    decision = route(gpu_task(1), snapshot(refused_h100(), down_a100))
    assert decision.verdict is Verdict.WAIT
    assert decision.explain("gpu-h100").reason is Reason.CLUSTER_REFUSED  # type: ignore[union-attr]


def test_refused_is_reported_until_a_request_gets_through() -> None:
    machine = HealthMachine(HealthPolicy(), {"nodes": True}, now=0.0)
    machine.refused(1.0, RefusalReason.CA_MISMATCH, "refused: ca-mismatch: ...")
    status = machine.status(2.0)
    assert (status.health, status.reason, status.refusal) == (
        Health.REFUSED,
        HealthReason.REFUSED,
        RefusalReason.CA_MISMATCH,
    )
    # Long past the down timeout it is still refused, never down: nothing was sent.
    assert machine.status(1000.0).health is Health.REFUSED
    machine.watch_connected("nodes", 1001.0)
    assert machine.status(1002.0).health is Health.UP
