"""The routing turn at scale, this tree against a baseline, in one run (a benchmark).

Run from the repository root::

    python -m benchmarks.bench_hotpath                  # 50 clusters x 5,000 nodes, 100,000 jobs
    python -m benchmarks.bench_hotpath --clusters 3 --nodes 500 --jobs 2000
    python -m benchmarks.bench_hotpath --baseline main  # the ref to compare with (default)
    python -m benchmarks.bench_hotpath --baseline none  # this tree only

Both contenders run the same workload, one after the other, each in its own process: the
baseline is ``git archive <ref>`` unpacked in a temporary directory, with this file's
workload code importing *its* ``dispatcher``. The workload drives the real
``ClusterCache`` (its informer handlers are fed the deltas directly: no API server could
hold 250,000 nodes on this machine) and the real ``Router`` on a ``JobTable`` of queued
jobs whose mailboxes never drain (a placed job stays in flight, as while its record is
written). Clusters are busy: a background pod fills each node but ``--free`` per cluster.

Turns measured:

- **fill**: the first turn over the whole queue: places until the free room is gone;
- **steady**: the next turn, nothing changed;
- **freed**: after background pods on ``--freed`` nodes of one cluster end (deltas fed to
  the cache), the turn that places into the room they left.

Reported per contender: turn time, placements and placements/s, and RSS (resident set
size, from ``/proc/self/statm``) grown by putting the queued jobs in the table (with
their router), per queued job. Then the ratios baseline / this tree.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
MODELS = ("NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3")


# ----- the workload (runs in the contender's process) ----------------------------------
def _node(cluster: int, index: int) -> dict[str, Any]:
    kind = index % 4
    name = f"c{cluster}-n{index}"
    labels = {"kubernetes.io/hostname": name, "pool": ("cpu", "cpu-big", "gpu", "gpu")[kind]}
    allocatable = {
        "cpu": ("16", "64", "96", "192")[kind],
        "memory": ("64Gi", "256Gi", "1Ti", "2Ti")[kind],
        "pods": "110",
    }
    taints = []
    if kind >= 2:
        allocatable["nvidia.com/gpu"] = "8"
        labels["nvidia.com/gpu.product"] = MODELS[kind - 2]
        taints = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _background(cluster: int, index: int) -> dict[str, Any]:
    """Someone else's pod that takes all of a node's GPUs and most of its CPU."""
    node = _node(cluster, index)
    cpu = int(node["status"]["allocatable"]["cpu"]) * 1000 - 1000
    requests: dict[str, str] = {"cpu": f"{cpu}m"}
    if "nvidia.com/gpu" in node["status"]["allocatable"]:
        requests["nvidia.com/gpu"] = "8"
    return {
        "metadata": {"name": f"bg-{index}", "namespace": "other"},
        "spec": {
            "nodeName": node["metadata"]["name"],
            "containers": [{"name": "c", "resources": {"requests": requests}}],
        },
        "status": {"phase": "Running"},
    }


def _task(shape: int, job: int) -> dict[str, Any]:
    gpus = (1, 2, 4, 8)[shape % 4]
    limits = {
        "cpu": f"{500 + 250 * (shape // 4 % 25)}m",
        "memory": "8Gi",
        "nvidia.com/gpu": str(gpus),
    }
    task: dict[str, Any] = {
        "name": f"task-{job}",
        "image": "busybox",
        "container_resources": {"limits": limits},
        "tolerations": [GPU_TOLERATION],
    }
    if shape // 100 % 2:
        task["requirements"] = {"gpu_model": "h100"}
    return task


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Provider:
    def api_client(self, cluster: str) -> Any:
        raise RuntimeError("the benchmark's cache makes no request")

    def invalidate(self, cluster: str, client: Any) -> None:
        return None


class _NoRunner:
    """Mail is never handled: a placed job stays in flight, its mailbox busy."""

    def submit(self, fn: Any) -> None:
        return None


def workload(args: argparse.Namespace) -> dict[str, Any]:
    import structlog  # noqa: PLC0415

    # As in production: no debug line per assumed pod.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    from dispatcher.clusters import ClusterCache  # noqa: PLC0415 - the contender's tree
    from dispatcher.core import RoutingPolicy, parse_task_spec  # noqa: PLC0415
    from dispatcher.dispatching.cycle import Router  # noqa: PLC0415
    from dispatcher.dispatching.jobs import Job  # noqa: PLC0415
    from dispatcher.dispatching.mailbox import Mailboxes  # noqa: PLC0415
    from dispatcher.dispatching.table import JobTable  # noqa: PLC0415
    from dispatcher.settings import ClusterSettings  # noqa: PLC0415

    settings = [
        ClusterSettings.model_validate(
            {
                "name": f"c{c}",
                "credentials": {"kubeconfig_file": {"path": "/nonexistent"}},
                "check_dependencies": False,
            }
        )
        for c in range(args.clusters)
    ]
    cache = ClusterCache(settings, _Provider())
    started = time.perf_counter()
    for c in range(args.clusters):
        cluster = cache._clusters[f"c{c}"]
        for informer in cluster.informers.values():
            informer._synced.set()
        on_node = cache._handler(cluster, "nodes")
        on_other = cache._handler(cluster, "pods-other")
        for n in range(args.nodes):
            on_node("ADDED", _node(c, n), None)
            if n >= args.free:
                on_other("ADDED", _background(c, n), None)
    fed = time.perf_counter() - started

    table = JobTable()
    mail = Mailboxes(_NoRunner(), lambda job_id, m: None, clock=time.time, draw=lambda: 0.5)
    gc.collect()
    rss_before = _rss()
    # One parsed spec per shape, copied per job with its own name: parsing 100,000 specs
    # would take minutes here. The copies share the nested values (resources, tolerations),
    # so the memory per job below is a floor for jobs parsed one by one.
    specs = [parse_task_spec(_task(shape, shape)) for shape in range(args.shapes)]
    for j in range(args.jobs):
        spec = specs[j % args.shapes].model_copy(update={"name": f"task-{j}"})
        table.put(Job(id=f"job-{j:07d}", spec=spec, submitted_at=float(j)))
    router = Router(cache, table, mail, RoutingPolicy())
    gc.collect()
    rss_jobs = _rss() - rss_before

    def turn() -> dict[str, float]:
        before = sum(len(cache.assumed(f"c{c}")) for c in range(args.clusters))
        started = time.perf_counter()
        router.route_queued(time.time())
        seconds = time.perf_counter() - started
        placed = sum(len(cache.assumed(f"c{c}")) for c in range(args.clusters)) - before
        return {"seconds": seconds, "placed": placed}

    result: dict[str, Any] = {"feed_seconds": fed, "rss_per_job": rss_jobs / args.jobs}
    result["fill"] = turn()
    result["steady"] = turn()
    cluster = cache._clusters["c0"]
    on_other = cache._handler(cluster, "pods-other")
    for n in range(args.free, args.free + args.freed):
        on_other("DELETED", _background(0, n), None)
    result["freed"] = turn()
    result["rss_total"] = _rss()
    return result


# ----- the orchestrator -----------------------------------------------------------------
def _unpack(ref: str, into: Path) -> None:
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(  # noqa: S603 - our own git, our own arguments
            ["git", "-C", str(ROOT), "archive", ref],  # noqa: S607
            stdout=out,
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")


def _contend(tree: Path, argv: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(  # noqa: S603 - this file, run again by the same interpreter
        [sys.executable, str(Path(__file__).resolve()), "--worker", *argv],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the contender in {tree} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rate(turn: dict[str, float]) -> float:
    return turn["placed"] / turn["seconds"] if turn["seconds"] else 0.0


def _report(args: argparse.Namespace, base: dict[str, Any], ours: dict[str, Any]) -> None:
    print(
        f"{args.clusters} clusters x {args.nodes:,} nodes ({args.free} free per cluster), "
        f"{args.jobs:,} queued jobs of {args.shapes} shapes; baseline {args.baseline}"
    )
    print(f"{'turn':8} {'':10} {'ms':>10} {'placed':>8} {'placed/s':>10}")
    for name in ("fill", "steady", "freed"):
        for who, result in ((args.baseline, base), ("this tree", ours)):
            turn = result[name]
            print(
                f"{name:8} {who:10} {turn['seconds'] * 1000:10.1f} {turn['placed']:8.0f} "
                f"{_rate(turn):10.0f}"
            )
        ratio = base[name]["seconds"] / ours[name]["seconds"] if ours[name]["seconds"] else 0.0
        print(f"{name:8} {'ratio':10} {ratio:9.1f}x faster")
    for who, result in ((args.baseline, base), ("this tree", ours)):
        print(
            f"memory   {who:10} {result['rss_per_job'] / 1024:.1f} KiB RSS per queued job, "
            f"{result['rss_total'] / 2**20:.0f} MiB in all (fed in {result['feed_seconds']:.0f} s)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=5000, help="nodes per cluster")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--shapes", type=int, default=200)
    parser.add_argument("--free", type=int, default=20, help="free nodes per cluster")
    parser.add_argument("--freed", type=int, default=20, help="nodes freed in one cluster")
    parser.add_argument(
        "--baseline", default="main", help="git ref to compare with; none: this tree only"
    )
    parser.add_argument("--json", type=Path, help="also write both results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [
        f"--{name}={getattr(args, name)}"
        for name in ("clusters", "nodes", "jobs", "shapes", "free", "freed")
    ]
    if args.worker:
        print(json.dumps(workload(args)))
        return
    if args.baseline == "none":
        ours = _contend(ROOT, sizes)
        print(json.dumps(ours, indent=2))
        base = {}
    else:
        with tempfile.TemporaryDirectory(prefix="bench-hotpath-") as tmp:
            _unpack(args.baseline, Path(tmp))
            base = _contend(Path(tmp) / "tree", sizes)
        ours = _contend(ROOT, sizes)
        _report(args, base, ours)
    if args.json:
        args.json.write_text(json.dumps({"baseline": base, "ours": ours}, indent=2))


if __name__ == "__main__":
    main()
