"""Generate the kube-dispatcher Grafana dashboard (``kube-dispatcher.json`` next to this file).

Edit the panels here and run ``python deploy/grafana/generate.py``; a test checks the JSON is
up to date, that every expression parses, and that it uses only metrics the dispatcher
exports (dispatcher/metrics.py). Import the JSON in Grafana (Dashboards > Import); pick the
Prometheus data source in the ``datasource`` variable.

Conventions of the queries:
- ``$namespace`` selects a dispatcher installation, ``$cluster`` the clusters shown.
- State gauges (cluster health, capacity, queue, jobs) are published by the leader: they
  are aggregated with ``max`` so the followers' copies (if any) do not double them.
- Counters are summed across replicas with ``rate(...[$__rate_interval])``.
- Queued jobs carry ``cluster=""``: job panels match ``cluster=~"$cluster|"``.

I/O: writes the JSON file; nothing else. Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "kube-dispatcher.json"

NS = 'namespace=~"$namespace"'
CL = f'{NS}, cluster=~"$cluster"'
JOB_CL = f'{NS}, cluster=~"$cluster|"'
RI = "$__rate_interval"
API_ERROR_CODES = 'code=~"5..|429|401|403|error"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

Panel = dict[str, Any]


class Layout:
    """Places panels left to right on Grafana's 24-column grid; rows start a new line."""

    def __init__(self) -> None:
        self.panels: list[Panel] = []
        self._x = 0
        self._y = 0
        self._row_height = 0
        self._next_id = 1

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        self._y += 1

    def _newline(self) -> None:
        self._y += self._row_height
        self._x = 0
        self._row_height = 0

    def add(self, panel: Panel, w: int, h: int) -> None:
        if self._x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"x": self._x, "y": self._y, "w": w, "h": h}
        self.panels.append(panel)
        self._x += w
        self._row_height = max(self._row_height, h)


def target(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> Panel:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }


def _targets(queries: list[tuple[str, str]], instant: bool = False) -> list[Panel]:
    return [
        target(expr, legend, instant=instant, ref=chr(ord("A") + i))
        for i, (expr, legend) in enumerate(queries)
    ]


def timeseries(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    *,
    unit: str = "short",
    stack: bool = False,
    min_zero: bool = True,
) -> Panel:
    custom: Panel = {"lineWidth": 1, "fillOpacity": 10 if not stack else 60, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults: Panel = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: list[Panel] | None = None,
) -> Panel:
    steps = [{"value": value, "color": color} for value, color in (thresholds or [(None, "green")])]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "mappings": mappings or [],
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "auto",
        },
    }


def value_map(mapping: dict[str, tuple[str, str]]) -> list[Panel]:
    return [
        {
            "type": "value",
            "options": {
                value: {"text": text, "color": color, "index": i}
                for i, (value, (text, color)) in enumerate(mapping.items())
            },
        }
    ]


def state_timeline(
    title: str, description: str, expr: str, legend: str, mappings: list[Panel]
) -> Panel:
    return {
        "type": "state-timeline",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, legend)],
        "fieldConfig": {
            "defaults": {
                "mappings": mappings,
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"value": None, "color": "text"}]},
            },
            "overrides": [],
        },
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
    }


def bargauge(title: str, description: str, expr: str, legend: str, unit: str = "short") -> Panel:
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, legend, instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "thresholds": {"mode": "absolute", "steps": [{"value": None, "color": "blue"}]},
            },
            "overrides": [],
        },
        "options": {
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    }


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...]) -> list[tuple[str, str]]:
    group = f"{by}, le" if by else "le"
    legend_prefix = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{{{selector}}}[{RI}])))",
            f"{legend_prefix}p{round(q * 100)}",
        )
        for q in qs
    ]


def _overview(g: Layout) -> None:
    g.row("Overview")
    g.add(
        stat(
            "Leader replicas",
            "Replicas holding the leader Lease. 1 is healthy; 0 means nothing is dispatched "
            "(DispatcherNoLeader), 2 a split brain (DispatcherSplitBrain).",
            f"sum(dispatcher_leader{{{NS}}})",
            thresholds=[(None, "red"), (1, "green"), (2, "red")],
        ),
        w=4,
        h=4,
    )
    g.add(
        stat(
            "Clusters down",
            "Clusters whose API server the dispatcher considers down (unreachable, timing "
            "out, 5xx): routing avoids them.",
            f"count(max by (cluster) (dispatcher_cluster_up{{{CL}}}) == 0) or vector(0)",
            thresholds=[(None, "green"), (1, "red")],
        ),
        w=4,
        h=4,
    )
    g.add(
        stat(
            "Queued tasks",
            "Tasks waiting for capacity (routing said wait).",
            f"max(dispatcher_queue_depth{{{NS}}})",
            thresholds=[(None, "green"), (10, "orange"), (50, "red")],
        ),
        w=4,
        h=4,
    )
    g.add(
        stat(
            "Running tasks",
            "Tasks whose pod runs, in the selected clusters.",
            f'sum(max by (cluster) (dispatcher_jobs{{{CL}, phase="running"}}))',
            thresholds=[(None, "blue")],
        ),
        w=4,
        h=4,
    )
    g.add(
        stat(
            "Free GPUs",
            "Unrequested GPUs on Ready nodes of the selected clusters, all models.",
            f"sum(max by (cluster, gpu_model) (dispatcher_cluster_gpus_free{{{CL}}}))",
            thresholds=[(None, "red"), (1, "orange"), (8, "green")],
        ),
        w=4,
        h=4,
    )
    g.add(
        stat(
            "Failed share (1h)",
            "Failed tasks among succeeded and failed ones over the last hour.",
            f'sum(increase(dispatcher_jobs_finished_total{{{JOB_CL}, outcome="failed"}}[1h]))'
            f" / sum(increase(dispatcher_jobs_finished_total"
            f'{{{JOB_CL}, outcome=~"succeeded|failed"}}[1h]))',
            unit="percentunit",
            thresholds=[(None, "green"), (0.1, "orange"), (0.25, "red")],
        ),
        w=4,
        h=4,
    )
    g.add(
        timeseries(
            "Leader by replica",
            "1 on the replica that holds the leader Lease and runs the dispatch loop.",
            [(f"max by (instance) (dispatcher_leader{{{NS}}})", "{{instance}}")],
        ),
        w=12,
        h=6,
    )
    g.add(
        timeseries(
            "Submissions by outcome",
            "Task submissions per second: accepted, duplicate (same idempotency key), "
            "conflict (same key, different spec), rejected (no cluster could ever run it), "
            "invalid (bad spec: a client error).",
            [
                (
                    f"sum by (outcome) (rate(dispatcher_submissions_total{{{NS}}}[{RI}]))",
                    "{{outcome}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        w=12,
        h=6,
    )


def _clusters(g: Layout) -> None:
    g.row("Clusters")
    g.add(
        state_timeline(
            "Cluster health",
            "up, degraded (routable, with problems), credentials unavailable (not routed to; "
            "its pods are left alone), refused (its credential breaks our rules; tasks only it "
            "could run are rejected; reason in dispatcher_cluster_refused) or down (its API "
            "server is in trouble; avoided by routing).",
            f'3 * max by (cluster) (dispatcher_cluster_health{{{CL}, state="up"}})'
            f' + 2 * max by (cluster) (dispatcher_cluster_health{{{CL}, state="degraded"}})'
            f" + max by (cluster) (dispatcher_cluster_health"
            f'{{{CL}, state="credentials-unavailable"}})'
            f' - max by (cluster) (dispatcher_cluster_health{{{CL}, state="refused"}})',
            "{{cluster}}",
            value_map(
                {
                    "3": ("up", "green"),
                    "2": ("degraded", "orange"),
                    "1": ("credentials unavailable", "purple"),
                    "0": ("down", "red"),
                    "-1": ("refused", "dark-red"),
                }
            ),
        ),
        w=12,
        h=7,
    )
    g.add(
        state_timeline(
            "Why a cluster is not up",
            "dispatcher_cluster_health_reason while not ok: throttled, watch-disconnected, "
            "errors, slow (degraded); credentials (Vault unavailable, or a 401); refused "
            "(with the rule: server-mismatch, ca-mismatch, private-address, exec-plugin...); "
            "unreachable (down). The dispatcher's cluster.health_changed log line has the "
            "message.",
            f"max by (cluster, reason) "
            f'(dispatcher_cluster_health_reason{{{CL}, reason!~"ok|refused"}}) == 1'
            f" or max by (cluster, reason) (dispatcher_cluster_refused{{{CL}}}) == 1",
            "{{cluster}} {{reason}}",
            value_map({"1": ("yes", "orange")}),
        ),
        w=12,
        h=7,
    )
    g.add(
        timeseries(
            "Free GPUs by cluster and model",
            "Unrequested GPUs on Ready nodes.",
            [
                (
                    f"max by (cluster, gpu_model) (dispatcher_cluster_gpus_free{{{CL}}})",
                    "{{cluster}} {{gpu_model}}",
                )
            ],
        ),
        w=12,
        h=8,
    )
    g.add(
        timeseries(
            "Allocatable GPUs by cluster and model",
            "Allocatable GPUs on Ready nodes (a drop means nodes went NotReady or away).",
            [
                (
                    f"max by (cluster, gpu_model) (dispatcher_cluster_gpus_allocatable{{{CL}}})",
                    "{{cluster}} {{gpu_model}}",
                )
            ],
        ),
        w=12,
        h=8,
    )
    g.add(
        timeseries(
            "GPU use by cluster and model",
            "Requested share of allocatable GPUs.",
            [
                (
                    f"1 - max by (cluster, gpu_model) (dispatcher_cluster_gpus_free{{{CL}}})"
                    f" / max by (cluster, gpu_model) "
                    f"(dispatcher_cluster_gpus_allocatable{{{CL}}} > 0)",
                    "{{cluster}} {{gpu_model}}",
                )
            ],
            unit="percentunit",
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "CPU: free / allocatable",
            "Cores on Ready nodes.",
            [
                (
                    f'max by (cluster) (dispatcher_cluster_free{{{CL}, resource="cpu"}})',
                    "{{cluster}} free",
                ),
                (
                    f'max by (cluster) (dispatcher_cluster_allocatable{{{CL}, resource="cpu"}})',
                    "{{cluster}} allocatable",
                ),
            ],
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Memory: free / allocatable",
            "Bytes on Ready nodes.",
            [
                (
                    f'max by (cluster) (dispatcher_cluster_free{{{CL}, resource="memory"}})',
                    "{{cluster}} free",
                ),
                (
                    f'max by (cluster) (dispatcher_cluster_allocatable{{{CL}, resource="memory"}})',
                    "{{cluster}} allocatable",
                ),
            ],
            unit="bytes",
        ),
        w=8,
        h=8,
    )
    g.add(
        bargauge(
            "Free GPUs now",
            "Unrequested GPUs per cluster and model, at the end of the range.",
            f"max by (cluster, gpu_model) (dispatcher_cluster_gpus_free{{{CL}}})",
            "{{cluster}} {{gpu_model}}",
        ),
        w=12,
        h=8,
    )
    g.add(
        timeseries(
            "Watch restarts",
            "Informer watch restarts per second by cluster, resource and reason "
            "(expired: normal relist; error/timeout/closed: the link is flaky).",
            [
                (
                    f"sum by (cluster, resource, reason) "
                    f"(rate(dispatcher_watch_restarts_total{{{CL}}}[{RI}]))",
                    "{{cluster}} {{resource}} {{reason}}",
                )
            ],
            unit="ops",
        ),
        w=12,
        h=8,
    )


def _queue_and_latency(g: Layout) -> None:
    g.row("Queue and latency")
    g.add(
        timeseries(
            "Queue depth",
            "Tasks waiting for capacity.",
            [(f"max(dispatcher_queue_depth{{{NS}}})", "queued")],
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Jobs by phase",
            "Jobs known to the dispatcher by phase (queued jobs have no cluster yet).",
            [
                (
                    f"sum by (phase) (max by (phase, cluster) (dispatcher_jobs{{{JOB_CL}}}))",
                    "{{phase}}",
                )
            ],
            stack=True,
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Jobs by cluster (pending, running)",
            "Pods created and not finished, by cluster.",
            [
                (
                    f'max by (cluster, phase) (dispatcher_jobs{{{CL}, phase=~"pending|running"}})',
                    "{{cluster}} {{phase}}",
                )
            ],
            stack=True,
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Queue wait (submit to pod created)",
            "Quantiles of the time tasks wait before their pod is created.",
            quantiles("dispatcher_queue_wait_seconds", "", NS, (0.5, 0.95, 0.99)),
            unit="s",
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Submit to running, by cluster",
            "p50 and p95 of the time from submission to the pod running.",
            quantiles("dispatcher_submit_to_running_seconds", "cluster", CL, (0.5, 0.95)),
            unit="s",
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Routing decision latency",
            "Time to compute one routing decision.",
            quantiles("dispatcher_routing_duration_seconds", "", NS, (0.5, 0.99)),
            unit="s",
        ),
        w=8,
        h=8,
    )


def _fair_share(g: Layout) -> None:
    g.row("Fair share")
    g.add(
        timeseries(
            "GPUs held by tenant",
            "What each fair-share tenant's live jobs hold, per GPU model (docs/fair-share.md).",
            [
                (
                    f'max by (tenant, pool) (dispatcher_tenant_usage{{{NS}, pool=~"gpu/.*"}})',
                    "{{tenant}} {{pool}}",
                )
            ],
            stack=True,
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Quota and borrowed, by tenant",
            "Nominal quota per quota resource, and how much of it each tenant holds beyond "
            "it on its cohort's idle quota.",
            [
                (
                    f"max by (tenant, pool) (dispatcher_tenant_quota{{{NS}}})",
                    "quota {{tenant}} {{pool}}",
                ),
                (
                    f"max by (tenant, pool) (dispatcher_tenant_borrowed{{{NS}}})",
                    "borrowed {{tenant}} {{pool}}",
                ),
            ],
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Waiting jobs and oldest wait, by tenant",
            "Queued jobs per tenant; a tenant whose oldest wait climbs without falling is "
            "starved (DispatcherTenantStarved).",
            [
                (f"max by (tenant) (dispatcher_tenant_waiting_jobs{{{NS}}})", "waiting {{tenant}}"),
                (
                    f"max by (tenant) (dispatcher_tenant_oldest_wait_seconds{{{NS}}}) / 60",
                    "oldest wait (min) {{tenant}}",
                ),
            ],
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Queue wait by tenant (p95)",
            "95th percentile of the time from submission to pod creation, per tenant.",
            quantiles("dispatcher_tenant_wait_seconds", "tenant", NS, (0.95,)),
            unit="s",
        ),
        w=12,
        h=8,
    )
    g.add(
        timeseries(
            "Reserved nodes",
            "Nodes held for waiting jobs that fit nowhere now (no starvation), by cluster.",
            [(f"max by (cluster) (dispatcher_reservations{{{CL}}})", "{{cluster}}")],
            stack=True,
        ),
        w=12,
        h=8,
    )


def _outcomes(g: Layout) -> None:
    g.row("Job outcomes")
    g.add(
        timeseries(
            "Finished jobs by outcome",
            "Jobs finished per second: succeeded, failed, cancelled, rejected.",
            [
                (
                    f"sum by (outcome) (rate(dispatcher_jobs_finished_total{{{JOB_CL}}}[{RI}]))",
                    "{{outcome}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Failures by class and cluster",
            "Failed jobs per second by failure class (image-pull, oom-killed, exit-code, "
            "unschedulable, node-lost, ...) and cluster.",
            [
                (
                    f"sum by (cluster, failure_class) (rate(dispatcher_jobs_finished_total"
                    f'{{{JOB_CL}, outcome="failed"}}[{RI}]))',
                    "{{cluster}} {{failure_class}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Failed share by cluster",
            "Failed among succeeded and failed jobs (DispatcherFailureRateSpike: > 25%).",
            [
                (
                    f"sum by (cluster) (rate(dispatcher_jobs_finished_total"
                    f'{{{CL}, outcome="failed"}}[{RI}]))'
                    f" / sum by (cluster) (rate(dispatcher_jobs_finished_total"
                    f'{{{CL}, outcome=~"succeeded|failed"}}[{RI}]))',
                    "{{cluster}}",
                )
            ],
            unit="percentunit",
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Job duration by outcome",
            "p50 and p95 of the time from submission to the end.",
            quantiles("dispatcher_job_duration_seconds", "outcome", NS, (0.5, 0.95)),
            unit="s",
        ),
        w=12,
        h=8,
    )
    g.add(
        timeseries(
            "Failovers",
            "Jobs moved away from a cluster per second, by that cluster and why "
            "(unschedulable, cluster_down).",
            [
                (
                    f"sum by (from_cluster, reason) (rate(dispatcher_failovers_total"
                    f'{{{NS}, from_cluster=~"$cluster"}}[{RI}]))',
                    "{{from_cluster}} {{reason}}",
                )
            ],
            unit="ops",
        ),
        w=12,
        h=8,
    )


def _routing(g: Layout) -> None:
    g.row("Routing")
    g.add(
        timeseries(
            "Routing decisions by verdict",
            "place (a cluster was chosen), wait (no room now), reject (no cluster ever).",
            [
                (
                    f"sum by (verdict) (rate(dispatcher_routing_decisions_total{{{NS}}}[{RI}]))",
                    "{{verdict}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Placements by cluster",
            "Where routing sends tasks.",
            [
                (
                    f"sum by (cluster) (rate(dispatcher_routing_decisions_total"
                    f'{{{CL}, verdict="place"}}[{RI}]))',
                    "{{cluster}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Rejections by reason",
            "Clusters passed over per second, by machine-readable reason (gpu model, "
            "capacity, region, cost cap, cluster down, ...).",
            [
                (
                    f"sum by (reason) (rate(dispatcher_routing_rejections_total{{{CL}}}[{RI}]))",
                    "{{reason}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Rejections by cluster and reason (top 10)",
            "Which cluster is passed over, and why.",
            [
                (
                    f"topk(10, sum by (cluster, reason) "
                    f"(rate(dispatcher_routing_rejections_total{{{CL}}}[{RI}])))",
                    "{{cluster}} {{reason}}",
                )
            ],
            unit="ops",
        ),
        w=24,
        h=8,
    )


def _credentials(g: Layout) -> None:
    g.row("Vault and credentials")
    g.add(
        timeseries(
            "Vault requests by operation and outcome",
            "login, renew, lookup, kv_read, kubernetes_creds; ok, denied, not_found, "
            "unavailable, error.",
            [
                (
                    f"sum by (operation, outcome) "
                    f"(rate(dispatcher_vault_requests_total{{{NS}}}[{RI}]))",
                    "{{operation}} {{outcome}}",
                )
            ],
            unit="reqps",
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Vault errors",
            "Vault requests that did not succeed (DispatcherVaultAuthFailing: logins).",
            [
                (
                    f"sum by (operation, outcome) (rate(dispatcher_vault_requests_total"
                    f'{{{NS}, outcome!="ok"}}[{RI}]))',
                    "{{operation}} {{outcome}}",
                )
            ],
            unit="reqps",
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Credential lifetime left",
            "Time until each cluster's cached credential and the Vault token expire "
            "(renewed ahead of expiry: a saw-tooth is healthy, a line reaching 0 is not).",
            [
                (
                    f"min by (cluster) "
                    f"(dispatcher_credential_expiry_timestamp_seconds{{{CL}}} > 0) - time()",
                    "{{cluster}}",
                ),
                (
                    f"min(dispatcher_vault_token_expiry_timestamp_seconds{{{NS}}} > 0) - time()",
                    "Vault token",
                ),
            ],
            unit="s",
        ),
        w=8,
        h=8,
    )


def _kubernetes_api(g: Layout) -> None:
    g.row("Kubernetes API")
    g.add(
        timeseries(
            "Requests by cluster and code",
            "Kubernetes API requests per second (code 'error': no HTTP answer).",
            [
                (
                    f"sum by (cluster, code) "
                    f"(rate(dispatcher_kube_api_requests_total{{{CL}}}[{RI}]))",
                    "{{cluster}} {{code}}",
                )
            ],
            unit="reqps",
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Errors by cluster and code",
            "5xx, 429 (throttled), 401/403 (credentials, RBAC) and no answer.",
            [
                (
                    f"sum by (cluster, code) (rate(dispatcher_kube_api_requests_total"
                    f"{{{CL}, {API_ERROR_CODES}}}[{RI}]))",
                    "{{cluster}} {{code}}",
                )
            ],
            unit="reqps",
        ),
        w=8,
        h=8,
    )
    g.add(
        timeseries(
            "Errors by cluster and verb",
            "Which operations fail.",
            [
                (
                    f"sum by (cluster, verb) (rate(dispatcher_kube_api_requests_total"
                    f"{{{CL}, {API_ERROR_CODES}}}[{RI}]))",
                    "{{cluster}} {{verb}}",
                )
            ],
            unit="reqps",
        ),
        w=8,
        h=8,
    )


def _process(g: Layout) -> None:
    g.row("Dispatcher process")
    own = f"and on (instance, job) dispatcher_leader{{{NS}}}"
    g.add(
        timeseries(
            "CPU by replica",
            "CPU seconds per second of each dispatcher process.",
            [(f"rate(process_cpu_seconds_total[{RI}]) {own}", "{{instance}}")],
            unit="percentunit",
        ),
        w=8,
        h=7,
    )
    g.add(
        timeseries(
            "Resident memory by replica",
            "Compare with the memory limit (the memory-backed /tmp counts too).",
            [(f"process_resident_memory_bytes {own}", "{{instance}}")],
            unit="bytes",
        ),
        w=8,
        h=7,
    )
    g.add(
        timeseries(
            "Open file descriptors by replica",
            "Sockets to API servers and Vault included.",
            [(f"process_open_fds {own}", "{{instance}}")],
        ),
        w=8,
        h=7,
    )


def build_panels() -> list[Panel]:
    g = Layout()
    for section in (
        _overview,
        _clusters,
        _queue_and_latency,
        _fair_share,
        _outcomes,
        _routing,
        _credentials,
        _kubernetes_api,
        _process,
    ):
        section(g)
    return g.panels


def variable_query(name: str, label: str, query: str, *, multi: bool) -> Panel:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def dashboard() -> Panel:
    return {
        "uid": "kube-dispatcher",
        "title": "kube-dispatcher",
        "description": "Cluster health, GPU capacity, queue, latency, outcomes, routing, "
        "Vault and Kubernetes API of kube-dispatcher. Generated by deploy/grafana/generate.py.",
        "tags": ["kube-dispatcher", "kubernetes", "gpu"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "links": [],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Data source",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable_query(
                    "namespace",
                    "Namespace",
                    "label_values(dispatcher_leader, namespace)",
                    multi=False,
                ),
                variable_query(
                    "cluster",
                    "Cluster",
                    'label_values(dispatcher_cluster_up{namespace=~"$namespace"}, cluster)',
                    multi=True,
                ),
            ]
        },
        "panels": build_panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
