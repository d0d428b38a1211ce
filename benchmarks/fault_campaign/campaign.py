"""One fault campaign on the real stack, start to verdict.

``run_campaign(stack, CampaignConfig(seed=...))``, in order:

1. a namespace of its own in every cluster (its pods, the replicas' job records and Lease);
2. the admin pod watches (``history.PodWatch``) on every cluster, before anything else;
3. two ``dispatcher serve`` replicas with leader election, configured for the stack as the
   end-to-end tests configure theirs (``tests.stack.dispatcher_config``);
4. the client stream (``workload.Workload``) and the fault schedule (``faults.Injector``),
   for ``minutes``;
5. the end: faults stopped and restored, no new tasks, every task's client waits for its
   job's final state (at most ``drain_seconds``), finished pods given ``cleanup_seconds`` to
   go, replicas stopped, watches stopped (their last lists close the history);
6. the checker (``checker.check``) on the history folder, which the result carries.

Whatever happens, the stack is left as found: faults undone, replicas stopped, the
campaign's pods deleted (the namespace stays: nothing deletes namespaces in the stack).

I/O: everything a campaign does (processes, the stack, HTTP, the history folder).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from benchmarks.fault_campaign.checker import Report, check, load_history
from benchmarks.fault_campaign.faults import PROXIED_CLUSTER, Injector, plan_faults
from benchmarks.fault_campaign.history import PodWatch
from benchmarks.fault_campaign.records import HistoryFiles
from benchmarks.fault_campaign.workload import TASK_KINDS, Workload
from tests.faultproxy import for_stack
from tests.stack.dispatcher_config import dispatcher_settings
from tests.stack.launcher import Stack
from tests.support import REPO, ServiceProcess, wait_until

__all__ = ["CampaignConfig", "CampaignResult", "apply_policy", "parse_policy", "run_campaign"]

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
REPLICAS = 2


@dataclass(frozen=True)
class CampaignConfig:
    seed: int
    minutes: float = 15.0
    out: Path | None = None
    #: Tasks submitted per second (Poisson arrivals).
    rate: float = 1.0
    #: After the faults: how long every task's client may still wait for its final state.
    drain_seconds: float = 180.0
    #: Then: how long finished pods have to be cleaned up.
    cleanup_seconds: float = 60.0
    #: The replicas' ``finished_pod_linger_seconds`` (``None``: the dispatcher's default).
    finished_pod_linger_seconds: float | None = None
    #: A task that another reachable cluster has room for must run within this.
    failover_bound_seconds: float = 60.0
    #: Shortens fault pauses and the gaps between faults (CI-sized campaigns: about 0.5).
    fault_scale: float = 1.0
    #: The replicas reach gpu-h100 through a fault proxy that makes it slow, throttled or
    #: failing now and then (``tests.faultproxy``).
    proxy_faults: bool = True
    #: ``wait`` or ``relaunch:SECONDS``: what a running attempt on an unreachable cluster may do.
    unreachable_policy: str = "wait"


@dataclass(frozen=True)
class CampaignResult:
    seed: int
    folder: Path
    report: Report


def parse_policy(text: str) -> dict[str, Any]:
    """``wait`` or ``relaunch:SECONDS`` as the checker reads it from the metadata."""
    if text == "wait":
        return {"action": "wait"}
    action, _, seconds = text.partition(":")
    if action == "relaunch" and seconds.replace(".", "", 1).isdigit():
        return {"action": "relaunch", "after_seconds": float(seconds)}
    raise ValueError(f"unreachable policy {text!r}: use 'wait' or 'relaunch:SECONDS'")


def apply_policy(config: Path, policy: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``policy`` as every cluster's ``on_unreachable`` in the dispatcher settings file
    ``config``; return each cluster's policy as the file now says (the checker's metadata).

    ``wait`` is the dispatcher's default and is left unwritten, so the file also suits a
    dispatcher that predates the setting (which then behaves as it does; the checker judges
    it by the declared policy).
    """
    settings = yaml.safe_load(config.read_text())
    if policy["action"] == "relaunch":
        for cluster in settings["clusters"]:
            cluster["on_unreachable"] = {
                "action": "relaunch",
                "relaunch_after_seconds": float(policy["after_seconds"]),
            }
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
    declared = {}
    for cluster in settings["clusters"]:
        written = cluster.get("on_unreachable") or {"action": "wait"}
        declared[cluster["name"]] = (
            {"action": "relaunch", "after_seconds": written["relaunch_after_seconds"]}
            if written.get("action") == "relaunch"
            else {"action": "wait"}
        )
    return declared


def _through_proxy(config: Path, cluster: str, url: str) -> None:
    """Point ``cluster``'s server in the settings file ``config`` at the proxy ``url``."""
    settings = yaml.safe_load(config.read_text())
    for entry in settings["clusters"]:
        if entry["name"] == cluster:
            entry["credentials"]["vault_kubernetes_secrets"]["server"] = url
    config.write_text(yaml.safe_dump(settings, sort_keys=False))


def _create_namespace(stack: Stack, namespace: str) -> None:
    for spec in stack.clusters:
        with stack.kube(spec) as api:
            core: Any = client.CoreV1Api(api)
            core.create_namespace(
                {"metadata": {"name": namespace, "labels": {"kube-dispatcher.dev/test": "fc"}}}
            )
        stack.grant_task_namespace(spec, namespace)


def _delete_pods(stack: Stack, namespace: str) -> None:
    for spec in stack.clusters:
        with contextlib.suppress(Exception), stack.kube(spec) as api:
            client.CoreV1Api(api).delete_collection_namespaced_pod(
                namespace, grace_period_seconds=0
            )


def _nodes(stack: Stack) -> dict[str, Any]:
    """Each cluster's nodes as the checker needs them (GPUs, model) for "had room"."""
    clusters: dict[str, Any] = {}
    for spec in stack.clusters:
        with stack.kube(spec) as api:
            core: Any = client.CoreV1Api(api)
            nodes = core.list_node().items
        clusters[spec.name] = {
            "nodes": [
                {
                    "name": node.metadata.name,
                    "gpus": int((node.status.allocatable or {}).get("nvidia.com/gpu", "0")),
                    "gpu_model": (node.metadata.labels or {}).get(GPU_PRODUCT_LABEL),
                }
                for node in nodes
            ]
        }
    return clusters


def _git_head() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"],  # noqa: S607 - git on PATH
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def run_campaign(  # noqa: PLR0915 - the campaign's steps, in order
    stack: Stack, config: CampaignConfig, say: Callable[[str], None] = print
) -> CampaignResult:
    """Run one campaign on ``stack`` (running); return the checker's verdict on its history."""
    namespace = f"fc-{uuid.uuid4().hex[:8]}"
    folder = config.out or Path(stack.state_dir) / "campaigns" / namespace
    policy = parse_policy(config.unreachable_policy)
    seconds = config.minutes * 60
    say(f"fault campaign: seed {config.seed}, {config.minutes} min, namespace {namespace}")
    say(f"fault campaign: history in {folder}")
    _create_namespace(stack, namespace)
    history = HistoryFiles(folder)
    env = stack.env()
    watches = {
        name: PodWatch(name, c.server, c.admin_token, c.ca_file, namespace, history.pods)
        for name, c in env.clusters.items()
    }
    replicas: list[ServiceProcess] = []
    injector: Injector | None = None
    workload: Workload | None = None
    proxy = for_stack(stack.env(), PROXIED_CLUSTER) if config.proxy_faults else None
    watching: list[PodWatch] = []
    try:
        for watch in watches.values():
            watch.start()
            watching.append(watch)
        service: dict[str, Any] = {"leader_election": True}
        if config.finished_pod_linger_seconds is not None:
            service["finished_pod_linger_seconds"] = config.finished_pod_linger_seconds
        declared: dict[str, Any] = {}
        for index in range(REPLICAS):
            settings = dispatcher_settings(
                stack, folder / f"replica{index}", namespace=namespace, service=service
            )
            declared = apply_policy(settings, policy)
            if proxy is not None:
                _through_proxy(settings, PROXIED_CLUSTER, proxy.url)
            replicas.append(ServiceProcess(settings, folder / f"replica{index}.log"))
        plans = plan_faults(
            config.seed, seconds, scale=config.fault_scale, proxy=config.proxy_faults
        )
        history.write_meta(
            {
                "seed": config.seed,
                "namespace": namespace,
                "git_head": _git_head(),
                "minutes": config.minutes,
                "rate": config.rate,
                "task_kinds": dict(TASK_KINDS),
                "clusters": _nodes(stack),
                "unreachable_policy": declared,
                "failover_bound_seconds": config.failover_bound_seconds,
                "observation_tolerance_seconds": 0.5,
                "lease_duration_seconds": 15.0,
                "dispatcher_service_settings": service,
                "replicas": [r.url for r in replicas],
                "proxied_cluster": PROXIED_CLUSTER if proxy is not None else None,
                "faults_planned": [p.as_dict() for p in plans],
            }
        )
        for replica in replicas:
            replica.start(timeout=120)
        workload = Workload(
            config.seed, namespace, [r.url for r in replicas], history.client, rate=config.rate
        )
        injector = Injector(stack, replicas, watches, history.faults, namespace, proxy=proxy)
        began = time.monotonic()
        workload.start()
        injector.start(plans, began)
        say(f"fault campaign: {len(plans)} faults planned; running")
        time.sleep(max(0.0, began + seconds - time.monotonic()))
        say("fault campaign: stopping faults")
        injector.stop()
        say("fault campaign: waiting for every job to finish")
        workload.stop_submitting(config.drain_seconds)
        submitted = workload.drain()
        say(f"fault campaign: {submitted} tasks submitted; waiting for cleanups")
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: not workload.unkept_pods(w.alive() for w in watches.values()),
                timeout=config.cleanup_seconds,
                what="finished pods cleaned up",
            )
    finally:
        # Also on an interruption: no fault stays in effect, no client waits any longer.
        if injector is not None:
            injector.stop()
        if workload is not None:
            workload.abandon()
        for replica in replicas:
            replica.stop()
        if proxy is not None:
            proxy.close()
        for watch in watching:
            watch.request_stop()
        for watch in watching:
            watch.stop()
        history.close()
        _delete_pods(stack, namespace)
    report = check(load_history(folder))
    return CampaignResult(config.seed, folder, report)
