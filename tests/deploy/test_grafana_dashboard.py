"""The Grafana dashboard: generated from deploy/grafana/generate.py, well-formed, templated
on the data source and the cluster, and covering every signal SREs watch."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from .support import DASHBOARD, DEPLOY, dashboard_queries

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_json_is_what_generate_py_produces() -> None:
    spec = importlib.util.spec_from_file_location("generate", DEPLOY / "grafana" / "generate.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text(encoding="utf-8") == module.render(), (
        "deploy/grafana/kube-dispatcher.json is stale: run python deploy/grafana/generate.py"
    )


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells


def test_every_query_uses_the_datasource_variable() -> None:
    dashboard = _dashboard()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what the panel shows"


def test_datasource_and_cluster_variables_exist_and_are_used() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["cluster"]["type"] == "query"
    assert variables["cluster"]["multi"] is True
    assert "dispatcher_cluster_up" in variables["cluster"]["query"]["query"]
    exprs = [expr for _, expr in dashboard_queries(dashboard)]
    assert sum('cluster=~"$cluster' in e for e in exprs) >= 10


def test_dashboard_covers_the_signals_sres_watch() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries(_dashboard()))
    for needle in [
        "dispatcher_cluster_up",
        "dispatcher_cluster_health",
        "dispatcher_cluster_gpus_free",
        "dispatcher_cluster_gpus_allocatable",
        "dispatcher_queue_depth",
        "histogram_quantile(0.95, sum by (le) (rate(dispatcher_queue_wait_seconds_bucket",
        "histogram_quantile(0.5, sum by (cluster, le) (rate(dispatcher_submit_to_running",
        "histogram_quantile(0.95, sum by (cluster, le) (rate(dispatcher_submit_to_running",
        "sum by (outcome) (rate(dispatcher_jobs_finished_total",
        "sum by (cluster, failure_class) (rate(dispatcher_jobs_finished_total",
        "dispatcher_failovers_total",
        "dispatcher_vault_requests_total",
        "sum by (cluster, code) (rate(dispatcher_kube_api_requests_total",
        "dispatcher_routing_decisions_total",
        "sum by (reason) (rate(dispatcher_routing_rejections_total",
        "dispatcher_leader",
        "max by (tenant, pool) (dispatcher_tenant_usage",
        "dispatcher_tenant_oldest_wait_seconds",
        "dispatcher_tenant_borrowed",
    ]:
        assert needle in exprs, f"no panel shows {needle}"
