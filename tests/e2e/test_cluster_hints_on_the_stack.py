"""KubernetesPodOperator's cluster-choosing parameters reach routing through the service:
a connection the settings map confines the task to its cluster; an unknown one
restricts nothing and the job's reason says so."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import finish, succeed, task


def hinted(name: str, **hints: Any) -> dict[str, Any]:
    spec = task(name, gpus=1, annotations=succeed())
    spec["requirements"] = {"cluster_hints": hints}
    return spec


def test_a_mapped_connection_sends_the_task_to_its_cluster_and_an_unknown_one_is_named(
    service_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The table as an operator would set it, here from the environment.
    monkeypatch.setenv(
        "DISPATCHER_ROUTING__AIRFLOW_CONNECTIONS", json.dumps({"h100_k8s": "gpu-h100"})
    )
    with service_factory().client() as api:
        mapped, _ = api.submit(hinted("mapped", kubernetes_conn_id="h100_k8s"))
        unknown, _ = api.submit(hinted("unknown", kubernetes_conn_id="legacy_k8s"))
        explained = api.explain(hinted("explained", kubernetes_conn_id="h100_k8s"))
        mapped_done = finish(api, mapped["id"])
        unknown_done = finish(api, unknown["id"])

    assert (mapped_done["state"], mapped_done["cluster"]) == ("succeeded", "gpu-h100")
    a100 = next(c for c in explained["clusters"] if c["cluster"] == "gpu-a100")
    assert (a100["reason"], a100["message"]) == (
        "not-allowed",
        "not what the task asks for: kubernetes_conn_id 'h100_k8s' stands for gpu-h100 "
        "(routing.airflow_connections)",
    )
    assert explained["notes"] == []
    # Without the hint this task goes to the cheaper gpu-a100, as the unknown one does.
    assert (unknown_done["state"], unknown_done["cluster"]) == ("succeeded", "gpu-a100")
    # The submission's answer carries the routing decision, notes included.
    assert unknown["reason"].endswith(
        "; note: kubernetes_conn_id 'legacy_k8s' is not in routing.airflow_connections; "
        "not restricting"
    ), unknown
