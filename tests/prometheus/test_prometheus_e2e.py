"""A real Prometheus scrapes a real dispatcher and evaluates the shipped alert rules.

The dispatcher runs as ``dispatcher serve`` against the test stack; Prometheus scrapes its
``/metrics`` every second and loads deploy/prometheus/rules.yaml. The metrics move as tasks
are submitted and finish, and stopping gpu-a100's API server turns
``dispatcher_cluster_up{cluster="gpu-a100"}`` to 0 and fires DispatcherClusterDown for
that cluster alone; starting it again resolves the alert.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from dispatcher.clusters import HealthPolicy
from tests.clusters.conftest import Outage
from tests.support import ServiceProcess, finish, succeed, task, wait_until

from .server import PrometheusServer, shortened_rules

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yaml"

#: The shipped rules wait `for: 2m` (and longer) before firing; the test's copy of the rule
#: file waits 5 s instead. Only the `for:` lines are rewritten: every expression is the
#: shipped one (``shortened_rules`` checks that nothing else differs).
SHORT_FOR_SECONDS = 5
SHORT_FOR = f"{SHORT_FOR_SECONDS}s"
#: The `namespace` label a ServiceMonitor would add; the rules group alerts by it.
NAMESPACE_LABEL = "kd-prom-e2e"
CLUSTERS = ("plane", "gpu-a100", "gpu-h100")

#: The dispatcher's default health policy: an API server that stops answering is down
#: after at most `down_after_seconds` (its watches disconnected), sooner when
#: `failure_threshold` requests fail in a row (refused connections: within a second).
#: Counted from the SIGTERM, so the API server's graceful shutdown comes first. Prometheus
#: adds a scrape (1 s); the margin covers a loaded machine.
POLICY = HealthPolicy()
APISERVER_SHUTDOWN_SECONDS = 15
DOWN_TIMEOUT = APISERVER_SHUTDOWN_SECONDS + POLICY.down_after_seconds + 10
#: `for:` plus a few evaluation and scrape intervals.
FIRING_TIMEOUT = SHORT_FOR_SECONDS + 15


def alerts_in(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def squeeze(expr: str) -> str:
    return "".join(expr.split())


def firing_by_cluster(prom: PrometheusServer, alertname: str) -> dict[str, str]:
    """cluster -> state (pending/firing) of the active alerts named ``alertname``."""
    return {a["labels"].get("cluster", ""): a["state"] for a in prom.alerts(alertname)}


def test_prometheus_scrapes_the_dispatcher_and_fires_cluster_down_for_the_dead_cluster_only(
    # First: a missing prometheus binary fails the test before the stack is started.
    prometheus_factory: Callable[..., PrometheusServer],
    service_factory: Callable[..., ServiceProcess],
    a100_outage: Outage,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    timings: dict[str, float] = {}
    # The default unreachable policy (wait): the outage must not move jobs, only show in
    # metrics and alerts.
    service = service_factory()
    rules = shortened_rules(RULES, tmp_path / "rules.yaml", SHORT_FOR)
    prom = prometheus_factory(
        target=service.url.removeprefix("http://"),
        rule_files=[rules],
        target_labels={"namespace": NAMESPACE_LABEL},
    )

    def context() -> str:
        return f"\n--- prometheus log:\n{prom.tail()}\n--- dispatcher log:\n{service.tail()}"

    # 1. Prometheus finds the dispatcher and scrapes it; the rules loaded.
    started = time.monotonic()
    target = wait_until(
        lambda: (t := prom.scrape_target()) is not None and t["health"] == "up" and t,
        timeout=30,
        what=f"target {service.url}/metrics up in Prometheus",
        context=context,
    )
    timings["target up"] = time.monotonic() - started
    assert target["scrapeUrl"] == f"{service.url}/metrics"
    assert target["lastError"] == ""
    loaded = {
        rule["name"]: rule
        for group in prom.api("rules")["groups"]
        for rule in group["rules"]
        if rule["type"] == "alerting"
    }
    shipped = {rule["alert"]: rule for rule in alerts_in(RULES)}
    assert loaded.keys() == shipped.keys(), f"rules loaded: {sorted(loaded)}"
    # Prometheus runs the shipped expression (it prints it re-formatted), with the short wait.
    cluster_down = loaded["DispatcherClusterDown"]
    assert squeeze(cluster_down["query"]) == squeeze(shipped["DispatcherClusterDown"]["expr"])
    assert cluster_down["duration"] == SHORT_FOR_SECONDS
    # Every cluster up, with the target's `namespace` label (as a ServiceMonitor adds).
    up = f'dispatcher_cluster_up{{namespace="{NAMESPACE_LABEL}"}}'
    wait_until(
        lambda: (
            {r["metric"]["cluster"]: r["value"][1] for r in prom.query(up)}
            == dict.fromkeys(CLUSTERS, "1")
        ),
        timeout=10,
        what=f"{up} == 1 for {CLUSTERS}",
        context=lambda: f"\n{prom.query(up)}",
    )
    finished_total = "sum(dispatcher_jobs_finished_total) or vector(0)"
    assert prom.value(finished_total) == 0

    # 2. Tasks are submitted and finish: the scraped counters follow.
    with service.client() as api:
        plane_job, _ = api.submit(task("quick", annotations=succeed("1s")))
        a100_job, _ = api.submit(
            task("quick-a100", gpus=1, model="A100", annotations=succeed("1s"))
        )
        # Runs until the end of the test: it must stay on gpu-a100 through the outage.
        long_job, _ = api.submit(task("long-a100", gpus=2, model="A100"))
        huge, _ = api.submit(task("huge", gpus=64))
        assert huge["state"] == "rejected"
        done = {job["id"]: finish(api, job["id"]) for job in (plane_job, a100_job)}
        assert {(j["state"], j["cluster"]) for j in done.values()} == {
            ("succeeded", "plane"),
            ("succeeded", "gpu-a100"),
        }
        wait_until(
            lambda: api.get(long_job["id"])["state"] == "running",
            timeout=60,
            what="long-a100 running",
        )
        assert api.get(long_job["id"])["cluster"] == "gpu-a100"

    succeeded = 'dispatcher_jobs_finished_total{{cluster="{}",outcome="succeeded"}}'
    # Two succeeded, and the rejected task counts as finished too (outcome="rejected").
    wait_until(
        lambda: prom.value(finished_total) == 3,
        timeout=10,
        what="Prometheus to see 3 finished jobs",
        context=lambda: f"\n{prom.query('dispatcher_jobs_finished_total')}{context()}",
    )
    assert prom.value('dispatcher_jobs_finished_total{outcome="rejected"}') == 1
    assert prom.value(succeeded.format("plane")) == 1
    assert prom.value(succeeded.format("gpu-a100")) == 1
    assert prom.value('dispatcher_submissions_total{outcome="accepted"}') == 3
    assert prom.value('dispatcher_submissions_total{outcome="rejected"}') == 1
    assert prom.value('sum(dispatcher_cluster_gpus_allocatable{cluster="gpu-a100"})') == 32
    assert prom.value("dispatcher_leader") == 1
    # Everything healthy: no alert fires or is about to. (DispatcherNoLeader's
    # `absent(dispatcher_leader)` is true until the first scrape, so it may have gone
    # pending, even firing with the short `for:`, before the target came up; it resolves at
    # the next evaluation.)
    wait_until(
        lambda: prom.alerts() == [],
        timeout=5,
        what="no active alert while all is well",
        context=lambda: f"\n{prom.alerts()}",
    )

    # 3. gpu-a100's API server stops: its up gauge drops to 0, then the alert fires.
    # Stopping is SIGTERM, then the API server's graceful shutdown (it serves for about 11 s
    # more in the stack): the stop runs in a thread while Prometheus is watched, and times
    # count from the SIGTERM.
    a100_up = 'dispatcher_cluster_up{cluster="gpu-a100"}'
    states: list[str] = []

    def alert_state() -> str:
        state = firing_by_cluster(prom, "DispatcherClusterDown").get("gpu-a100", "inactive")
        if not states or states[-1] != state:
            states.append(state)
        return state

    def stop_and_time() -> float:
        a100_outage.stop()  # faults.stop_apiserver("gpu-a100"): returns once it exited
        return time.monotonic()

    with ThreadPoolExecutor(max_workers=1) as pool:
        stopping = time.monotonic()
        stop = pool.submit(stop_and_time)
        wait_until(
            lambda: prom.value(a100_up) == 0,
            timeout=DOWN_TIMEOUT,
            what=f"{a100_up} == 0 in Prometheus",
            context=context,
        )
        down_seen = time.monotonic()
        timings["cluster_up=0"] = down_seen - stopping
        wait_until(
            lambda: alert_state() == "firing",
            timeout=FIRING_TIMEOUT,
            what="DispatcherClusterDown firing for gpu-a100",
            context=lambda: f" (states seen: {states}){context()}",
        )
        firing_seen = time.monotonic()
        timings["alert firing"] = firing_seen - stopping
        timings["apiserver exited"] = stop.result() - stopping
    # It waited its (shortened) `for:` as pending before firing.
    assert "pending" in states, f"states seen: {states}"
    # ... for (about) as long as the test's `for:`; polling and evaluation add some slack.
    assert firing_seen - down_seen >= SHORT_FOR_SECONDS - 1, (
        f"fired {firing_seen - down_seen:.1f}s after up=0"
    )

    [alert] = prom.alerts("DispatcherClusterDown")
    assert alert["labels"] == {
        "alertname": "DispatcherClusterDown",
        "cluster": "gpu-a100",
        "namespace": NAMESPACE_LABEL,
        "severity": "warning",
    }
    assert float(alert["value"]) == 0
    assert "gpu-a100" in alert["annotations"]["summary"]
    # The other clusters stay up, and no alert about anything but gpu-a100 fires or is
    # pending (DispatcherKubeAPIErrors for gpu-a100 may: its requests do fail).
    assert prom.value('dispatcher_cluster_up{cluster="plane"}') == 1
    assert prom.value('dispatcher_cluster_up{cluster="gpu-h100"}') == 1
    others = [a for a in prom.alerts() if a["labels"].get("cluster") != "gpu-a100"]
    assert others == [], f"alerts not about gpu-a100: {others}"
    assert prom.query('ALERTS{alertname="DispatcherClusterDown",cluster!="gpu-a100"}') == []
    with service.client() as api:
        # The grace period is long: the job stays where it was.
        assert api.get(long_job["id"])["cluster"] == "gpu-a100"

    # 4. gpu-a100 comes back: up again, and the alert resolves.
    restarted = time.monotonic()
    # faults.start_apiserver("gpu-a100"): returns once the API server answers.
    a100_outage.start()
    wait_until(
        lambda: prom.value(a100_up) == 1,
        timeout=30,
        what=f"{a100_up} == 1 after the restart",
        context=context,
    )
    timings["cluster_up=1 after restart"] = time.monotonic() - restarted
    wait_until(
        lambda: prom.alerts("DispatcherClusterDown") == [],
        timeout=10,
        what="DispatcherClusterDown resolved",
        context=context,
    )
    timings["alert resolved after restart"] = time.monotonic() - restarted
    assert prom.query('ALERTS{alertname="DispatcherClusterDown"}') == []
    summary = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
    record_property("timings", summary)
    print(f"prometheus e2e timings: {summary}")  # noqa: T201 - shown with -s
