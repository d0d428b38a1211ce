"""API load of the informers: requests per minute for 100 and 1,000 running pods.

Run from the repository root against the local test stack (started if needed)::

    KD_STACK_DIR=... KD_STACK_PORT_BASE=... python -m benchmarks.bench_informers
    python -m benchmarks.bench_informers --sizes 100 1000 --window 60

For each size it scales a namespace of gpu-a100 to that many Running pods (half labelled
as the dispatcher's, half somebody else's, so both pod informers carry them; simulated
nodes are added so 1,000 pods fit), then measures two windows of ``--window`` seconds:

1. a baseline without informers (the stack's scheduler and KWOK talk to the API server
   too);
2. the same with a ``ClusterCache`` watching gpu-a100 (nodes, our pods, other pods).

It prints, per minute: the requests the cache itself sent (its
``dispatcher_kube_api_requests_total``, exact), and the API server's
``apiserver_request_total`` on pods and nodes (the informers' resources) beyond the
baseline (a watch is counted when it ends); also the watches the cache holds open
(``apiserver_longrunning_requests``) and what the initial list cost. The figure must not
grow with the pod count: one list per informer at start (a page per 500 pods), then one
long watch each, renewed every 5 to 10 minutes (``--watch-timeout 10`` shows renewals
inside the window).

Measured on the test stack (60 s windows)::

    watch timeout 300-600 s:  100 pods: 0 requests/min sent, 1,000 pods: 0 requests/min
    watch timeout 10-20 s:    100 pods: 11 requests/min,    1,000 pods: 11 requests/min
    start-up: 6-7 requests (3 lists, 3 watches), synced in 0.2-0.4 s at either size
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python benchmarks/bench_informers.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.clusters import CacheOptions, ClusterCache, WatchOptions
from dispatcher.metrics import REGISTRY
from dispatcher.settings import (
    ClientSettings,
    ClusterSettings,
    Credentials,
    InsecureAllowances,
    KubeconfigFileCredentials,
)
from tests.clusters.provider import KubeconfigProvider
from tests.stack import Stack
from tests.stack.launcher import NodePool

CLUSTER = "gpu-a100"
NAMESPACE = "kd-bench"
MANAGED = {"kube-dispatcher.dev/managed-by": "kube-dispatcher"}
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
BENCH_POOL = NodePool(
    "a100-bench",
    10,
    cpu="96",
    memory="1152Gi",
    gpus=8,
    gpu_product="NVIDIA-A100-SXM4-80GB",
    instance_type="p4de.24xlarge",
    tainted=True,
)


def bench_pod(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"bench-{index:04d}",
            "labels": {"bench": "informers", **(MANAGED if index % 2 == 0 else {})},
        },
        "spec": {
            "restartPolicy": "Never",
            "tolerations": [TOLERATION],
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }
            ],
        },
    }


class ApiServerMetrics:
    """Reads the API server's own metrics with the admin token."""

    def __init__(self, stack: Stack) -> None:
        env = stack.env().clusters[CLUSTER]
        self.url = f"{env.server}/metrics"
        self.headers = {"Authorization": f"Bearer {env.admin_token}"}
        self.verify = ssl.create_default_context(cafile=env.ca_file)

    def read(self) -> tuple[Counter[tuple[str, str]], float]:
        """Requests so far by (verb, resource), and the watches open now."""
        text = httpx.get(self.url, headers=self.headers, verify=self.verify, timeout=10).text
        requests: Counter[tuple[str, str]] = Counter()
        watches = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "apiserver_request_total":
                    key = (sample.labels.get("verb", ""), sample.labels.get("resource", ""))
                    requests[key] += sample.value
                elif (
                    sample.name == "apiserver_longrunning_requests"
                    and sample.labels.get("verb") == "WATCH"
                ):
                    watches += sample.value
        return requests, watches


def own_requests() -> float:
    """Requests the dispatcher sent to gpu-a100 so far (its own counter)."""
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if (
                sample.name == "dispatcher_kube_api_requests_total"
                and sample.labels.get("cluster") == CLUSTER
            ):
                total += sample.value
    return total


def ensure_capacity(stack: Stack, core: Any) -> list[str]:
    existing = {n.metadata.name for n in core.list_node().items}
    if f"{BENCH_POOL.prefix}-0" in existing:
        return []
    names = stack.create_nodes(CLUSTER, (BENCH_POOL,))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = sum(
            1
            for node in core.list_node().items
            if node.metadata.name in names
            and any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        )
        if ready == len(names):
            return names
        time.sleep(0.5)
    raise SystemExit("the benchmark nodes did not become Ready within 60 s")


def scale_to(core: Any, count: int) -> None:
    """Create pods bench-0000 ... until ``count`` exist, then wait until all run."""
    with contextlib.suppress(client.ApiException):
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    present = {p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items}
    missing = [i for i in range(count) if f"bench-{i:04d}" not in present]
    with ThreadPoolExecutor(max_workers=8) as workers:
        list(workers.map(lambda i: core.create_namespaced_pod(NAMESPACE, bench_pod(i)), missing))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(NAMESPACE).items
        running = sum(1 for p in pods if p.status.phase == "Running")
        if running >= count:
            return
        time.sleep(1)
    raise SystemExit(f"only {running} of {count} pods Running after 300 s")


def _informer_resources(requests: Counter[tuple[str, str]]) -> float:
    """Requests on the resources the informers use (others come from the stack only)."""
    return sum(n for (_, resource), n in requests.items() if resource in ("pods", "nodes"))


def per_minute(value: float, seconds: float) -> float:
    return value * 60.0 / seconds


def measure(
    stack: Stack, server: ApiServerMetrics, count: int, window: float, watch_timeout: int
) -> dict[str, Any]:
    env = stack.env()
    provider = KubeconfigProvider(env)
    settings = ClusterSettings(
        name=CLUSTER,
        credentials=Credentials(
            kubeconfig_file=KubeconfigFileCredentials(
                path=Path(env.clusters[CLUSTER].restricted_kubeconfig)
            )
        ),
        client=ClientSettings(),
        allow_insecure=InsecureAllowances(allow_private_addresses=True),
    )
    time.sleep(5)  # let the pods' last status updates settle
    base_start, base_watches = server.read()
    time.sleep(window)
    base_end, _ = server.read()
    baseline = _informer_resources(base_end - base_start)

    options = CacheOptions(watch=WatchOptions(timeout_seconds=watch_timeout))
    cache = ClusterCache([settings], provider, options=options)
    sent_before_start = own_requests()
    started = time.monotonic()
    cache.start()
    if not cache.wait_synced(120):
        raise SystemExit("the cache did not sync within 120 s")
    sync_seconds = time.monotonic() - started
    time.sleep(1)
    startup_requests = own_requests() - sent_before_start
    try:
        sent_start = own_requests()
        with_start, with_watches = server.read()
        time.sleep(window)
        with_end, _ = server.read()
        sent = own_requests() - sent_start
        observed = with_end - with_start
        cached_pods = len(cache.managed_pods(CLUSTER))
    finally:
        cache.stop()
    return {
        "pods": count,
        "managed_pods_seen": cached_pods,
        "sync_seconds": sync_seconds,
        "startup_requests": startup_requests,
        "sent_per_minute": per_minute(sent, window),
        "server_per_minute": per_minute(_informer_resources(observed) - baseline, window),
        "baseline_per_minute": per_minute(baseline, window),
        "extra_watches": with_watches - base_watches,
        "by_verb": {
            f"{verb} {resource}": per_minute(n, window)
            for (verb, resource), n in sorted(observed.items())
            if n
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    parser.add_argument(
        "--watch-timeout",
        type=int,
        default=WatchOptions().timeout_seconds,
        help="server-side watch timeout t (each watch lasts t to 2t); shorten it to see "
        "watch renewals inside the window",
    )
    parser.add_argument("--keep", action="store_true", help="keep the pods and nodes")
    args = parser.parse_args(argv)

    stack = Stack()
    stack.up()
    server = ApiServerMetrics(stack)
    results = []
    with stack.kube(CLUSTER) as admin:
        core = client.CoreV1Api(admin)
        created_nodes = ensure_capacity(stack, core) if max(args.sizes) > 400 else []
        try:
            for count in sorted(args.sizes):
                scale_to(core, count)
                print(f"measuring {count} running pods ({args.window:.0f} s per window)...")
                results.append(measure(stack, server, count, args.window, args.watch_timeout))
        finally:
            if not args.keep:
                core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
                for name in created_nodes:
                    with contextlib.suppress(client.ApiException):
                        core.delete_node(name)

    print()
    print(
        f"{'pods':>6} {'sync s':>7} {'start-up req':>12} {'sent/min':>9} "
        f"{'server/min':>11} {'baseline/min':>13} {'open watches':>13}"
    )
    for r in results:
        print(
            f"{r['pods']:>6} {r['sync_seconds']:>7.2f} {r['startup_requests']:>12.0f} "
            f"{r['sent_per_minute']:>9.1f} {r['server_per_minute']:>11.1f} "
            f"{r['baseline_per_minute']:>13.1f} {r['extra_watches']:>+13.0f}"
        )
    print()
    print("sent/min: requests the cache sent in steady state (its own counter);")
    print("server/min: apiserver_request_total on pods and nodes, minus the baseline window")
    print("  (the stack's scheduler and KWOK use them too; a watch is counted when it ends);")
    print("open watches: long-running WATCH requests the cache added.")
    for r in results:
        verbs = ", ".join(f"{k}: {v:.1f}" for k, v in r["by_verb"].items())
        print(f"{r['pods']} pods, all requests/min on the API server with the cache: {verbs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
