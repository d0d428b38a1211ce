"""Extra links on the dispatcher operators' tasks: the job's page in the dispatcher's
console, and the Grafana dashboard filtered to the cluster the job ran on.

Airflow 3 computes a task's extra links on the worker when the task ends (``get_link``
with the operator that ran) and keeps them for its UI; so the links are built from what
the operator learned while it ran (``job_id``, ``job_cluster``) and from its connection's
extras: ``console_url`` (where people reach the dispatcher; default the connection's URL:
the console is served at ``/ui``) and ``grafana_url`` (the kube-dispatcher dashboard, e.g.
``https://grafana.example.com/d/kube-dispatcher/kube-dispatcher``; its ``cluster``
variable is set). A task that never got a job, or a connection without ``grafana_url``,
has an empty link, which Airflow does not show.

I/O: reads the task's connection (through the hook).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

from dispatcher.airflow.connection import ConnectionSettings
from dispatcher.airflow.hooks import DispatcherHook

__all__ = ["DispatcherConsoleLink", "GrafanaClusterLink", "console_link", "grafana_link"]

#: The dashboard variable that filters it to one cluster (deploy/grafana/generate.py).
GRAFANA_CLUSTER_VARIABLE = "var-cluster"


def console_link(settings: ConnectionSettings, job_id: str | None) -> str:
    """The job's console page ('' without a job)."""
    if not job_id:
        return ""
    base = (settings.console_url or settings.base_url).rstrip("/")
    return f"{base}/ui/jobs/{quote(job_id, safe='')}"


def grafana_link(settings: ConnectionSettings, cluster: str | None) -> str:
    """The dashboard filtered to ``cluster`` ('' without a dashboard URL or a cluster)."""
    if not settings.grafana_url or not cluster:
        return ""
    separator = "&" if "?" in settings.grafana_url else "?"
    return settings.grafana_url + separator + urlencode({GRAFANA_CLUSTER_VARIABLE: cluster})


def _settings(operator: Any) -> ConnectionSettings:
    return DispatcherHook(operator.dispatcher_conn_id).settings


class DispatcherConsoleLink(BaseOperatorLink):
    """The job's page in the dispatcher's console: routing, attempts, outcome, log."""

    name = "Dispatcher job"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return console_link(_settings(operator), getattr(operator, "job_id", None))


class GrafanaClusterLink(BaseOperatorLink):
    """The kube-dispatcher Grafana dashboard, filtered to the job's cluster."""

    name = "Grafana (cluster)"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return grafana_link(_settings(operator), getattr(operator, "job_cluster", None))
