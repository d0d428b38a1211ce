"""The operator's extra links: the job's console page and the Grafana dashboard filtered
to the job's cluster, as the real Airflow stores them when a task ends (``dag.test()``
against a dispatcher process on the test stack)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from dispatcher.airflow.connection import settings_from_connection
from dispatcher.airflow.links import GRAFANA_CLUSTER_VARIABLE, console_link, grafana_link
from tests.airflow.conftest import TEST_DAGS, DagRunner, succeed
from tests.support import ADMIN_TOKEN, ServiceProcess

REPO = Path(__file__).resolve().parents[2]
GRAFANA = "https://grafana.example.com/d/kube-dispatcher/kube-dispatcher?orgId=1"
CONSOLE = "_link_DispatcherConsoleLink"
DASHBOARD = "_link_GrafanaClusterLink"


def test_a_task_links_to_its_job_in_the_console_and_to_grafana_for_its_cluster(
    airflow_db: Path, service: ServiceProcess, dag_objects: None, tmp_path: Path
) -> None:
    runner = DagRunner(
        service,
        tmp_path,
        auth={"password": ADMIN_TOKEN, "extra": {"grafana_url": GRAFANA}},
    )
    run = runner.run(TEST_DAGS / "console_links.py", "console_links", annotate={"train": succeed()})
    assert run.task("train")["state"] == "success", run.log[-3000:]
    links = run.summary["links"]["train[-1]"]
    # No console_url: the connection's own URL, where the console is served.
    prefix = f"{service.url}/ui/jobs/"
    assert links[CONSOLE].startswith(prefix), links
    job_id = links[CONSOLE][len(prefix) :]
    assert links[DASHBOARD] == f"{GRAFANA}&{GRAFANA_CLUSTER_VARIABLE}=gpu-h100"
    # The link is the job's page: signed in, it shows the job and where it ran.
    page = httpx.get(links[CONSOLE], headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert page.status_code == 200
    assert job_id in page.text
    assert 'id="cluster">gpu-h100<' in page.text


def test_without_a_grafana_url_there_is_no_dashboard_link(
    airflow_db: Path, service: ServiceProcess, dag_objects: None, tmp_path: Path
) -> None:
    public = "https://dispatcher.example.com"
    runner = DagRunner(
        service, tmp_path, auth={"password": ADMIN_TOKEN, "extra": {"console_url": public}}
    )
    run = runner.run(TEST_DAGS / "console_links.py", "console_links", annotate={"train": succeed()})
    links = run.summary["links"]["train[-1]"]
    assert links[CONSOLE].startswith(f"{public}/ui/jobs/")
    assert links[DASHBOARD] == ""


def test_the_dashboard_has_the_cluster_variable_the_link_sets() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/kube-dispatcher.json").read_text())
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert GRAFANA_CLUSTER_VARIABLE.removeprefix("var-") in names


@pytest.mark.parametrize("name", ["console_url", "grafana_url"])
@pytest.mark.parametrize("value", ["grafana.example.com", "ftp://x", "javascript:alert(1)"])
def test_a_link_url_that_is_not_http_is_refused_naming_the_extra(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"extra '{name}' must be an http\\(s\\) URL"):
        settings_from_connection(conn_id="d", host="https://d.example", extra={name: value})


def test_links_escape_what_they_carry() -> None:
    settings = settings_from_connection(
        conn_id="d",
        host="https://d.example/",
        extra={"grafana_url": "https://g.example/d/kd"},
    )
    assert console_link(settings, "a/b c") == "https://d.example/ui/jobs/a%2Fb%20c"
    assert console_link(settings, None) == ""
    assert grafana_link(settings, "gpu&x") == "https://g.example/d/kd?var-cluster=gpu%26x"
    assert grafana_link(settings, None) == ""
