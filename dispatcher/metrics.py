"""Every Prometheus metric the dispatcher exports, in one place, with small recording helpers.

All metrics live in ``REGISTRY`` (not the process-global default registry), so a test can
read exact values and several dispatchers in one process do not collide. Label sets are
bounded: cluster names come from the inventory, reasons and phases from enums; never a job
id, pod name or error text.

The Grafana dashboard (``deploy/grafana``) and alert rules (``deploy/prometheus``) refer to
these names; a test checks that they refer to nothing else.

I/O: none (exposition is served by the API layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
_ROUTING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

BUILD_INFO = Info("dispatcher_build", "Version of the running dispatcher.", registry=REGISTRY)

# ---- submissions and routing -------------------------------------------------------------
SUBMISSIONS = Counter(
    "dispatcher_submissions_total",
    "Task submissions by outcome (accepted, duplicate, rejected, invalid, forbidden).",
    ["outcome"],
    registry=REGISTRY,
)
ROUTING_DECISIONS = Counter(
    "dispatcher_routing_decisions_total",
    "Routing decisions by verdict (place, wait, reject) and chosen cluster ('' unless placed).",
    ["verdict", "cluster"],
    registry=REGISTRY,
)
ROUTING_REJECTIONS = Counter(
    "dispatcher_routing_rejections_total",
    "Clusters passed over by routing decisions, by cluster and machine-readable reason.",
    ["cluster", "reason"],
    registry=REGISTRY,
)
ROUTING_SECONDS = Histogram(
    "dispatcher_routing_duration_seconds",
    "Time to compute one routing decision.",
    buckets=_ROUTING_BUCKETS,
    registry=REGISTRY,
)

# ---- jobs ----------------------------------------------------------------------------------
JOBS = Gauge(
    "dispatcher_jobs",
    "Jobs known to this dispatcher by phase and cluster ('' while queued).",
    ["phase", "cluster"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "dispatcher_queue_depth",
    "Jobs waiting for capacity (routing said wait).",
    registry=REGISTRY,
)
QUEUE_OLDEST_SUBMISSION = Gauge(
    "dispatcher_queue_oldest_submission_timestamp_seconds",
    "Unix time at which the oldest still-queued job was submitted (0 when none waits).",
    registry=REGISTRY,
)
QUEUE_WAIT_SECONDS = Histogram(
    "dispatcher_queue_wait_seconds",
    "Time from submission to pod creation.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SUBMIT_TO_RUNNING_SECONDS = Histogram(
    "dispatcher_submit_to_running_seconds",
    "Time from submission to the pod running, per cluster.",
    ["cluster"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOB_DURATION_SECONDS = Histogram(
    "dispatcher_job_duration_seconds",
    "Time from submission to the job's end, by outcome (succeeded, failed, cancelled).",
    ["outcome"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "dispatcher_jobs_finished_total",
    "Finished jobs by cluster, outcome and failure class ('' when succeeded).",
    ["cluster", "outcome", "failure_class"],
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "dispatcher_failovers_total",
    "Jobs moved away from a cluster, by that cluster and why (unschedulable, cluster_down).",
    ["from_cluster", "reason"],
    registry=REGISTRY,
)

OVERLAPPING_ATTEMPTS = Counter(
    "dispatcher_overlapping_attempts_total",
    "Attempts seen alive while another attempt of the same job was alive (0 unless a "
    "cluster's unreachable policy allows a relaunch), by the stale attempt's cluster.",
    ["cluster"],
    registry=REGISTRY,
)
ILLEGAL_TRANSITIONS = Counter(
    "dispatcher_illegal_transitions_total",
    "Events the job state machine ignored (late or duplicated), by state and event.",
    ["state", "event"],
    registry=REGISTRY,
)
RECORD_WRITES = Counter(
    "dispatcher_record_writes_total",
    "Job record writes by verb (create, update, delete) and outcome (ok, stale, fenced, error).",
    ["verb", "outcome"],
    registry=REGISTRY,
)
LAUNCH_ERRORS = Counter(
    "dispatcher_launch_errors_total",
    "Pod creates that did not succeed, by cluster and kind (refused, uncertain).",
    ["cluster", "kind"],
    registry=REGISTRY,
)
DEPENDENCY_COPIES = Counter(
    "dispatcher_dependency_copies_total",
    "Writes of dependency copies (Secrets, ConfigMaps) in a cluster, by kind and action "
    "(created, updated, joined, deleted).",
    ["cluster", "kind", "action"],
    registry=REGISTRY,
)

# ---- clusters ------------------------------------------------------------------------------
CLUSTER_UP = Gauge(
    "dispatcher_cluster_up",
    "0 when the cluster's API server is down (unreachable, timing out, 5xx), else 1 "
    "(up, degraded, or credentials unavailable: see dispatcher_cluster_health).",
    ["cluster"],
    registry=REGISTRY,
)
CLUSTER_HEALTH = Gauge(
    "dispatcher_cluster_health",
    "Cluster health as a one-hot state set (up, degraded, down, credentials-unavailable, refused).",
    ["cluster", "state"],
    registry=REGISTRY,
)
CLUSTER_HEALTH_REASON = Gauge(
    "dispatcher_cluster_health_reason",
    "Why the cluster has its health, one-hot (ok, throttled, watch-disconnected, errors, "
    "slow, unreachable, credentials, refused).",
    ["cluster", "reason"],
    registry=REGISTRY,
)
CLUSTER_REFUSED = Gauge(
    "dispatcher_cluster_refused",
    "1 for the rule that refused the cluster's credentials (server-mismatch, ca-mismatch, "
    "private-address, exec-plugin, local-file, insecure-transport, unsupported, invalid); "
    "all 0 when they are accepted.",
    ["cluster", "reason"],
    registry=REGISTRY,
)
CLUSTER_ALLOCATABLE = Gauge(
    "dispatcher_cluster_allocatable",
    "Allocatable resources of Ready nodes (cpu in cores, memory in bytes).",
    ["cluster", "resource"],
    registry=REGISTRY,
)
CLUSTER_FREE = Gauge(
    "dispatcher_cluster_free",
    "Unrequested resources of Ready nodes (cpu in cores, memory in bytes).",
    ["cluster", "resource"],
    registry=REGISTRY,
)
CLUSTER_GPUS_ALLOCATABLE = Gauge(
    "dispatcher_cluster_gpus_allocatable",
    "Allocatable GPUs of Ready nodes by GPU model.",
    ["cluster", "gpu_model"],
    registry=REGISTRY,
)
CLUSTER_GPUS_FREE = Gauge(
    "dispatcher_cluster_gpus_free",
    "Unrequested GPUs of Ready nodes by GPU model.",
    ["cluster", "gpu_model"],
    registry=REGISTRY,
)
KUBE_API_REQUESTS = Counter(
    "dispatcher_kube_api_requests_total",
    "Kubernetes API requests by cluster, verb and HTTP status code ('error' without one).",
    ["cluster", "verb", "code"],
    registry=REGISTRY,
)
WATCH_RESTARTS = Counter(
    "dispatcher_watch_restarts_total",
    "Watch restarts by cluster, resource and reason (expired, error, timeout, closed, short: "
    "ended at once having delivered nothing).",
    ["cluster", "resource", "reason"],
    registry=REGISTRY,
)

# ---- credentials ---------------------------------------------------------------------------
VAULT_REQUESTS = Counter(
    "dispatcher_vault_requests_total",
    "Vault requests by operation (login, renew, lookup, kv_read, kubernetes_creds) and outcome.",
    ["operation", "outcome"],
    registry=REGISTRY,
)
VAULT_TOKEN_EXPIRY = Gauge(
    "dispatcher_vault_token_expiry_timestamp_seconds",
    "Unix time at which the dispatcher's Vault token expires (0 when it has none).",
    registry=REGISTRY,
)
CREDENTIAL_EXPIRY = Gauge(
    "dispatcher_credential_expiry_timestamp_seconds",
    "Unix time at which the cached credential of a cluster expires (0 when it does not).",
    ["cluster"],
    registry=REGISTRY,
)

# ---- high availability ---------------------------------------------------------------------
LEADER = Gauge(
    "dispatcher_leader",
    "1 on the replica that holds the leader lease and runs the dispatch loop.",
    registry=REGISTRY,
)
LEADER_ELECTION_ERRORS = Counter(
    "dispatcher_leader_election_errors_total",
    "Failed leader-election rounds and callbacks by reason (unreachable, api_error, "
    "credentials, on_started, on_stopped, other).",
    ["reason"],
    registry=REGISTRY,
)

# ---- API ----------------------------------------------------------------------------------
API_LONG_REQUESTS = Gauge(
    "dispatcher_api_long_requests",
    "Long requests being served: long polls (kind=wait) and log follows (kind=follow).",
    ["kind"],
    registry=REGISTRY,
)
API_LONG_REQUESTS_REFUSED = Counter(
    "dispatcher_api_long_requests_refused_total",
    "Long polls and log follows refused by kind and by the bound they met: the caller's "
    "(scope=client, 429) or this replica's (scope=replica, 503).",
    ["kind", "scope"],
    registry=REGISTRY,
)

# ---- fair share (labels: configured tenants and pools, so bounded) -----------------------
TENANT_QUOTA = Gauge(
    "dispatcher_tenant_quota",
    "A tenant's nominal quota across clusters per quota resource (fair_share.tenants.*.quota; "
    "pool: gpu/<model as configured>, cpu in millicores, memory in bytes).",
    ["tenant", "pool"],
    registry=REGISTRY,
)
TENANT_USAGE = Gauge(
    "dispatcher_tenant_usage",
    "What a tenant's live jobs hold, per pool (gpu/<node GPU model>, cpu in millicores, "
    "memory in bytes).",
    ["tenant", "pool"],
    registry=REGISTRY,
)
TENANT_BORROWED = Gauge(
    "dispatcher_tenant_borrowed",
    "How much of a quota resource a tenant holds beyond its nominal quota (borrowed from "
    "its cohort).",
    ["tenant", "pool"],
    registry=REGISTRY,
)
TENANT_WAITING = Gauge(
    "dispatcher_tenant_waiting_jobs",
    "Queued jobs per fair-share tenant.",
    ["tenant"],
    registry=REGISTRY,
)
TENANT_OLDEST_WAIT = Gauge(
    "dispatcher_tenant_oldest_wait_seconds",
    "How long the tenant's longest-waiting queued job has waited (0 when none waits).",
    ["tenant"],
    registry=REGISTRY,
)
TENANT_WAIT_SECONDS = Histogram(
    "dispatcher_tenant_wait_seconds",
    "Time from submission to pod creation, per fair-share tenant.",
    ["tenant"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RESERVATIONS = Gauge(
    "dispatcher_reservations",
    "Nodes reserved for waiting jobs (fair share), per cluster.",
    ["cluster"],
    registry=REGISTRY,
)

# ---- settings -------------------------------------------------------------------------------
SETTINGS_RELOADS = Counter(
    "dispatcher_settings_reloads_total",
    "Changes of the settings file seen, by outcome (applied: its fair_share section is in "
    "force; invalid: refused, the settings in force kept).",
    ["outcome"],
    registry=REGISTRY,
)

# ---- threads -------------------------------------------------------------------------------
THREAD_RESTARTS = Counter(
    "dispatcher_thread_restarts_total",
    "Supervised threads restarted after an exception escaped their loop, by thread name.",
    ["thread"],
    registry=REGISTRY,
)

#: ``dispatcher.core.Health`` and ``dispatcher.clusters.HealthReason`` values (a test checks).
HEALTH_STATES = ("up", "degraded", "down", "credentials-unavailable", "refused")
HEALTH_REASONS = (
    "ok",
    "throttled",
    "watch-disconnected",
    "errors",
    "slow",
    "unreachable",
    "credentials",
    "refused",
)
#: ``dispatcher.errors.RefusalReason`` values (a test checks): the bounded ``reason`` label.
REFUSAL_REASONS = (
    "server-mismatch",
    "ca-mismatch",
    "private-address",
    "exec-plugin",
    "local-file",
    "insecure-transport",
    "unsupported",
    "invalid",
)


def record_cluster_health(cluster: str, state: str, reason: str) -> None:
    """Set the one-hot health state and reason and the up gauge of ``cluster``."""
    for candidate in HEALTH_STATES:
        CLUSTER_HEALTH.labels(cluster=cluster, state=candidate).set(1 if candidate == state else 0)
    for candidate in HEALTH_REASONS:
        CLUSTER_HEALTH_REASON.labels(cluster=cluster, reason=candidate).set(
            1 if candidate == reason else 0
        )
    CLUSTER_UP.labels(cluster=cluster).set(0 if state == "down" else 1)


def record_cluster_refused(cluster: str, reason: str | None) -> None:
    """Set the one-hot refusal reason of ``cluster`` (``None``: not refused, all 0)."""
    for candidate in REFUSAL_REASONS:
        CLUSTER_REFUSED.labels(cluster=cluster, reason=candidate).set(
            1 if candidate == reason else 0
        )


def record_capacity(
    cluster: str,
    *,
    allocatable: Mapping[str, float],
    free: Mapping[str, float],
    gpus_allocatable: Mapping[str, float],
    gpus_free: Mapping[str, float],
) -> None:
    """Publish a cluster's capacity; GPU models no longer present drop to 0."""
    for resource, value in allocatable.items():
        CLUSTER_ALLOCATABLE.labels(cluster=cluster, resource=resource).set(value)
    for resource, value in free.items():
        CLUSTER_FREE.labels(cluster=cluster, resource=resource).set(value)
    _set_by_model(CLUSTER_GPUS_ALLOCATABLE, cluster, gpus_allocatable)
    _set_by_model(CLUSTER_GPUS_FREE, cluster, gpus_free)


def _set_by_model(gauge: Gauge, cluster: str, values: Mapping[str, float]) -> None:
    known = {
        sample.labels["gpu_model"]
        for metric in gauge.collect()
        for sample in metric.samples
        if sample.labels.get("cluster") == cluster
    }
    for model in known - values.keys():
        gauge.labels(cluster=cluster, gpu_model=model).set(0)
    for model, value in values.items():
        gauge.labels(cluster=cluster, gpu_model=model).set(value)


def record_jobs(counts: Iterable[tuple[str, str, int]]) -> None:
    """Replace the jobs gauge with ``(phase, cluster, count)`` triples (others become 0)."""
    fresh = {(phase, cluster): count for phase, cluster, count in counts}
    stale = {
        (sample.labels["phase"], sample.labels["cluster"])
        for metric in JOBS.collect()
        for sample in metric.samples
    }
    for phase, cluster in stale - fresh.keys():
        JOBS.labels(phase=phase, cluster=cluster).set(0)
    for (phase, cluster), count in fresh.items():
        JOBS.labels(phase=phase, cluster=cluster).set(count)


def sample_value(name: str, labels: Mapping[str, str] | None = None) -> float:
    """Current value of one sample (0 when absent): for tests and the demo summary."""
    value = REGISTRY.get_sample_value(name, dict(labels or {}))
    return 0.0 if value is None else value


def replace_gauge(gauge: Gauge, fresh: Mapping[tuple[str, ...], float]) -> None:
    """Set ``gauge`` to exactly ``fresh`` (label values -> value): label sets no longer in
    it are removed (a tenant taken out of the settings stops being reported)."""
    for metric in gauge.collect():
        for sample in metric.samples:
            labels = tuple(sample.labels.values())
            if labels not in fresh:
                gauge.remove(*labels)
    for labels, value in fresh.items():
        gauge.labels(*labels).set(value)
