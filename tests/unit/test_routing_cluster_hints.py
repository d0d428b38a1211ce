"""KubernetesPodOperator's cluster-choosing parameters are routing hints, never refusals:
``in_cluster=True`` stands for the in-plane cluster (or nothing, by policy); a
``kubernetes_conn_id``, ``cluster_context`` or ``config_file`` the policy's table maps
is an allow-list; a value the table does not know restricts nothing, and the decision
says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.core import ClusterRole, ClusterState, Reason, RoutingPolicy, Verdict, route
from dispatcher.core.snapshot import Snapshot
from dispatcher.errors import ConfigError
from dispatcher.settings import load_settings

from .factories import A100, H100, cluster, gpu_node, gpu_task, info, node, snapshot, task

EXAMPLE = Path(__file__).parents[2] / "config" / "dispatcher.example.yaml"
TABLE = RoutingPolicy(
    airflow_connections={
        "gpu_k8s": "gpu-a100",
        "any_gpu": ["gpu-a100", "gpu-h100"],
        "prod-context": "gpu-h100",
        "/home/airflow/.kube/gpu.yaml": "gpu-h100",
        "kubernetes_default": "plane",
    }
)


def _clusters() -> Snapshot:
    plane = cluster(info("plane", role=ClusterRole.IN_PLANE), [node("cpu-0")])
    gpus: list[ClusterState] = [
        cluster(info(name), [gpu_node(f"{name}-0", model), node(f"{name}-cpu")])
        for name, model in (("gpu-a100", A100), ("gpu-h100", H100))
    ]
    return snapshot(plane, *gpus)


def hinted(**hints: Any) -> Any:
    return task(
        container_resources={"requests": {"cpu": "1"}}, requirements={"cluster_hints": hints}
    )


def test_a_mapped_connection_confines_the_task_to_its_cluster() -> None:
    decision = route(hinted(kubernetes_conn_id="gpu_k8s"), _clusters(), TABLE)

    assert (decision.verdict, decision.cluster) == (Verdict.PLACE, "gpu-a100")
    plane = decision.explain("plane")
    assert plane is not None
    assert plane.reason is Reason.NOT_ALLOWED
    assert plane.message == (
        "not what the task asks for: kubernetes_conn_id 'gpu_k8s' stands for gpu-a100 "
        "(routing.airflow_connections)"
    )
    assert decision.notes == ()


def test_a_connection_mapped_to_several_clusters_lets_routing_choose_among_them() -> None:
    decision = route(hinted(kubernetes_conn_id="any_gpu"), _clusters(), TABLE)

    assert decision.cluster in ("gpu-a100", "gpu-h100")
    assert {v.cluster for v in decision.clusters if v.reason is Reason.NOT_ALLOWED} == {"plane"}


@pytest.mark.parametrize(
    ("hints", "cluster"),
    [
        ({"cluster_context": "prod-context"}, "gpu-h100"),
        ({"config_file": "/home/airflow/.kube/gpu.yaml"}, "gpu-h100"),
    ],
)
def test_a_mapped_context_or_kubeconfig_path_confines_the_task(
    hints: dict[str, str], cluster: str
) -> None:
    assert route(hinted(**hints), _clusters(), TABLE).cluster == cluster


def test_an_unknown_connection_restricts_nothing_and_is_named() -> None:
    decision = route(hinted(kubernetes_conn_id="legacy_k8s"), _clusters(), TABLE)

    assert decision.cluster == "plane"
    assert not any(v.reason is Reason.NOT_ALLOWED for v in decision.clusters)
    assert decision.notes == (
        "kubernetes_conn_id 'legacy_k8s' is not in routing.airflow_connections; not restricting",
    )
    assert decision.message().endswith(
        "; note: kubernetes_conn_id 'legacy_k8s' is not in routing.airflow_connections; "
        "not restricting"
    )
    assert decision.to_dict()["notes"] == list(decision.notes)


def test_without_a_table_every_hint_is_unknown_and_nothing_is_refused() -> None:
    decision = route(
        hinted(kubernetes_conn_id="kubernetes_default", cluster_context="prod"), _clusters()
    )

    assert decision.verdict is Verdict.PLACE
    assert len(decision.notes) == 2


def test_the_most_specific_known_hint_decides_and_the_others_are_noted() -> None:
    decision = route(
        hinted(kubernetes_conn_id="gpu_k8s", cluster_context="prod-context"), _clusters(), TABLE
    )

    assert decision.cluster == "gpu-h100"
    assert decision.notes == ("kubernetes_conn_id 'gpu_k8s' not used: cluster_context decides",)


def test_an_unknown_context_leaves_the_decision_to_a_known_connection() -> None:
    decision = route(
        hinted(kubernetes_conn_id="gpu_k8s", cluster_context="laptop"), _clusters(), TABLE
    )

    assert decision.cluster == "gpu-a100"
    assert decision.notes == (
        "cluster_context 'laptop' is not in routing.airflow_connections; not restricting",
    )


def test_in_cluster_means_the_in_plane_cluster_and_overrides_the_connection() -> None:
    decision = route(hinted(in_cluster=True, kubernetes_conn_id="gpu_k8s"), _clusters(), TABLE)

    assert decision.cluster == "plane"
    a100 = decision.explain("gpu-a100")
    assert a100 is not None
    assert a100.message == (
        "not what the task asks for: in_cluster=True asks for the in-plane cluster (plane)"
    )
    assert decision.notes == (
        "kubernetes_conn_id 'gpu_k8s' not used: in_cluster=True runs the task in-plane",
    )


def test_in_cluster_can_be_configured_to_mean_no_preference() -> None:
    policy = RoutingPolicy(in_cluster="no-preference")
    decision = route(
        gpu_task(2, "A100", requirements={"cluster_hints": {"in_cluster": True}}),
        _clusters(),
        policy,
    )

    assert decision.cluster == "gpu-a100"
    assert decision.notes == ("in_cluster=True is no preference here (routing.in_cluster)",)


def test_in_cluster_false_asks_for_nothing() -> None:
    decision = route(hinted(in_cluster=False), _clusters(), TABLE)

    assert (decision.cluster, decision.notes) == ("plane", ())


def test_a_hint_whose_clusters_cannot_run_the_task_rejects_it_with_the_hint_named() -> None:
    decision = route(
        gpu_task(
            2, "A100", requirements={"cluster_hints": {"kubernetes_conn_id": "kubernetes_default"}}
        ),
        _clusters(),
        TABLE,
    )

    assert decision.verdict is Verdict.REJECT
    assert "kubernetes_conn_id 'kubernetes_default' stands for plane" in decision.message()


def test_the_table_accepts_a_cluster_name_or_a_list() -> None:
    assert TABLE.airflow_connections["gpu_k8s"] == ("gpu-a100",)
    assert TABLE.airflow_connections["any_gpu"] == ("gpu-a100", "gpu-h100")
    with pytest.raises(ValueError, match="RFC 1123"):
        RoutingPolicy(airflow_connections={"x": "Not_A_Cluster"})


# ----------------------------------------------------------------------- settings


def test_the_table_is_read_from_the_routing_settings() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.routing.airflow_connections["gpu_k8s"] == ("gpu-a100",)
    assert settings.routing.in_cluster == "in-plane"


def test_a_table_naming_an_unconfigured_cluster_is_refused_at_start(tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["routing"]["airflow_connections"] = {"gpu_k8s": "gpu-v100", "ok": ["plane"]}
    path = tmp_path / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert [str(p) for p in refused.value.problems] == [
        "routing.airflow_connections[gpu_k8s]: 'gpu-v100' is not one of the configured "
        "clusters (gpu-a100, gpu-h100, plane)"
    ]
