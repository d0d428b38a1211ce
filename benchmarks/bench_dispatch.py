"""Dispatcher benchmark against the real stack (not a timed test; prints measured figures).

``python -m benchmarks.bench_dispatch [--jobs 500] [--tracked 5000] [--monitor-seconds 60]``

1. Throughput and latency: ``--jobs`` tasks are submitted at once (16 client threads) to a
   ``dispatcher serve`` process; an admin watch on the clusters records when each pod
   appears. Reports jobs dispatched per second (first submit to last pod created) and
   p50/p99 submit-to-created latency.
2. Monitoring cost: with those pods running, the apiservers' ``apiserver_request_total``
   is read before and after ``--monitor-seconds`` with the dispatcher running, after a
   baseline window of the same length with it stopped; the difference per running pod per
   minute is the dispatcher's monitoring cost (KubernetesPodOperator polls every 2 s: 30
   requests per pod per minute).
3. Memory: ``--tracked`` more jobs that must wait (the A100s are all taken) are submitted;
   the dispatcher's resident memory is read from /proc.

Runs on its own stack instance (``KD_STACK_DIR``/``KD_STACK_PORT_BASE`` default to
``/tmp/kd-stack-bench`` and 32400) with enough CPU nodes for the pods.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client

os.environ.setdefault("KD_STACK_DIR", "/tmp/kd-stack-bench")  # noqa: S108 - a scratch stack
os.environ.setdefault("KD_STACK_PORT_BASE", "32400")

from dispatcher.client import DispatcherClient
from tests.stack.dispatcher_config import dispatcher_settings
from tests.stack.launcher import Stack, default_clusters
from tests.support import ServiceProcess


def _pod_watch(
    stack: Stack, cluster: str, namespace: str, seen: dict[str, float], stop: threading.Event
) -> None:
    """Record when each job's pod is first seen (an admin watch, outside the dispatcher)."""
    with stack.kube(cluster) as api:
        while not stop.is_set():
            response = client.CoreV1Api(api).list_namespaced_pod(
                namespace,
                watch=True,
                timeout_seconds=30,
                _preload_content=False,
                _request_timeout=(5, 40),
            )
            for raw in response.stream(decode_content=True):
                for line in raw.splitlines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    labels = event["object"]["metadata"].get("labels") or {}
                    job = labels.get("kube-dispatcher.dev/job-id")
                    if job and job not in seen:
                        seen[job] = time.time()
                if stop.is_set():
                    break


def _requests_total(
    stack: Stack, cluster: str, resources: tuple[str, ...] = ("pods", "nodes")
) -> float:
    token = (Path(stack.state_dir) / "admin.token").read_text().strip()
    text = httpx.get(
        f"{stack.server(cluster)}/metrics",
        headers={"Authorization": f"Bearer {token}"},
        verify=str(Path(stack.state_dir) / "pki" / "ca.crt"),
        timeout=30,
    ).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and any(
            f'resource="{r}"' in line for r in resources
        ):
            total += float(line.rpartition(" ")[2])
    return total


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _task(name: str, **extra: Any) -> dict[str, Any]:
    spec = {
        "name": name,
        "image": "bench:1",
        "container_resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "idempotency_key": f"bench/{name}/{uuid.uuid4().hex}",
    }
    spec.update(extra)
    return spec


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:  # noqa: PLR0915 - a script, step by step
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--tracked", type=int, default=5000)
    parser.add_argument("--monitor-seconds", type=float, default=60.0)
    args = parser.parse_args()
    plane_nodes = max(3, args.jobs // 100 + 2)
    stack = Stack(clusters=default_clusters(plane_nodes=plane_nodes))
    was_up = stack.is_up()
    stack.up()
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    for spec in stack.clusters:
        with stack.kube(spec) as api:
            client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        stack.grant_task_namespace(spec, namespace)
    folder = Path(stack.state_dir) / namespace
    config = dispatcher_settings(
        stack,
        folder,
        namespace=namespace,
        service={"log_level": "warning"},
        # Client-side rate limits are per-cluster settings; the default (20 QPS) suits
        # shared production apiservers, not a measurement of the dispatcher itself.
        client={"qps": 500, "burst": 1000},
    )
    service = ServiceProcess(config, folder / "dispatcher.log")
    service.start()
    results: dict[str, Any] = {"jobs": args.jobs, "plane_nodes": plane_nodes}
    try:
        seen: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(
            target=_pod_watch, args=(stack, "plane", namespace, seen, stop), daemon=True
        )
        watcher.start()
        time.sleep(1.0)
        submitted: dict[str, float] = {}
        with DispatcherClient(service.url, timeout=60) as api:

            def submit(i: int) -> None:
                started = time.time()
                job, _ = api.submit(_task(f"b{i}"))
                submitted[job["id"]] = started

            began = time.time()
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(submit, range(args.jobs)))
            submit_done = time.time()
            deadline = time.time() + 300
            while len([j for j in submitted if j in seen]) < args.jobs and time.time() < deadline:
                time.sleep(0.1)
            created = [seen[j] for j in submitted if j in seen]
            latencies = [seen[j] - submitted[j] for j in submitted if j in seen]
            results["pods_created"] = len(created)
            results["submit_seconds"] = round(submit_done - began, 2)
            results["jobs_per_second"] = round(len(created) / (max(created) - began), 1)
            results["latency_p50_s"] = round(statistics.median(latencies), 3)
            results["latency_p99_s"] = round(_percentile(latencies, 0.99), 3)
            print(f"dispatch: {json.dumps(results)}", flush=True)

            # Monitoring cost: baseline without the dispatcher, then with it.
            wait = time.time() + 120
            while time.time() < wait and len(api.jobs(state="running")) < args.jobs:
                time.sleep(1)
            running = len(api.jobs(state="running"))
        stop.set()
        service.stop()
        clusters = [s.name for s in stack.clusters]
        before = sum(_requests_total(stack, c) for c in clusters)
        time.sleep(args.monitor_seconds)
        baseline = sum(_requests_total(stack, c) for c in clusters) - before
        service.start()
        time.sleep(10)  # start-up lists are not monitoring
        before = sum(_requests_total(stack, c) for c in clusters)
        time.sleep(args.monitor_seconds)
        during = sum(_requests_total(stack, c) for c in clusters) - before
        minutes = args.monitor_seconds / 60
        results["running_pods"] = running
        results["monitor_requests_per_minute"] = round((during - baseline) / minutes, 1)
        results["monitor_requests_per_pod_per_minute"] = round(
            (during - baseline) / minutes / max(running, 1), 4
        )
        print(f"monitoring: {json.dumps(results)}", flush=True)

        # Memory with many tracked jobs: fill the A100s, then queue jobs that must wait.
        with DispatcherClient(service.url, timeout=60) as api:
            for i in range(4):
                api.submit(
                    _task(
                        f"fill{i}",
                        container_resources={"limits": {"nvidia.com/gpu": "8"}},
                        requirements={"allowed_clusters": ["gpu-a100"]},
                    )
                )
            time.sleep(3)
            pid = service.proc.pid if service.proc else 0
            rss_before = _rss_mib(pid)

            def queue(i: int) -> None:
                api.submit(
                    _task(
                        f"q{i}",
                        container_resources={"limits": {"nvidia.com/gpu": "1"}},
                        requirements={"allowed_clusters": ["gpu-a100"]},
                    )
                )

            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(queue, range(args.tracked)))
            time.sleep(5)
            gauges = httpx.get(f"{service.url}/metrics", timeout=30).text.splitlines()
            results["tracked_jobs"] = int(
                sum(float(g.rpartition(" ")[2]) for g in gauges if g.startswith("dispatcher_jobs{"))
            )
            results["rss_mib_before_tracked"] = round(rss_before, 1)
            results["rss_mib_with_tracked"] = round(_rss_mib(pid), 1)
        print(f"memory: {json.dumps(results)}", flush=True)
    finally:
        service.stop()
        if not was_up and os.environ.get("KD_STACK_KEEP") != "1":
            stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
