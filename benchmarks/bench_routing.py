"""Routing throughput and latency on large synthetic snapshots (a benchmark, not a test).

Run from the repository root::

    python -m benchmarks.bench_routing            # the full report
    python -m benchmarks.bench_routing --quick    # fewer decisions per scenario

It reports decisions per second and p50/p99 latency of one ``route()`` call for
10 clusters x 2,000 nodes and 50 clusters x 5,000 nodes (nodes per cluster), then two
sweeps that show the cost follows distinct node shapes, not node count: more nodes of
the same shapes, and more shapes for the same nodes. Target: p99 <= 1 ms at 10 x 2,000 on
one core. Snapshot build time is shown too; it is paid once per cycle, not per decision.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (python benchmarks/bench_routing.py): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher.core import (
    ClusterInfo,
    ClusterRole,
    ClusterState,
    CostTable,
    Health,
    NodeInfo,
    PodDefaults,
    Snapshot,
    Taint,
    TaskSpec,
    parse_task_spec,
    route,
)

GiB = 2**30
A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TAINT = Taint("nvidia.com/gpu", "present", "NoSchedule")

# (cpu millicores, memory bytes, gpus, gpu model) of the node types clusters are made of.
NODE_TYPES = [
    (16_000, 64 * GiB, 0, None),
    (64_000, 256 * GiB, 0, None),
    (96_000, 1000 * GiB, 8, A100),
    (192_000, 2000 * GiB, 8, H100),
    (32_000, 128 * GiB, 0, None),
    (48_000, 384 * GiB, 4, A100),
]
# Pod sizes the synthetic nodes are busy with: (cpu millicores, memory bytes, gpus).
POD_SIZES = [(500, GiB, 0), (2_000, 8 * GiB, 0), (8_000, 32 * GiB, 1), (4_000, 16 * GiB, 2)]

TASKS = [
    {"name": "small-cpu", "container_resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
    {"name": "big-cpu", "container_resources": {"requests": {"cpu": "40", "memory": "200Gi"}}},
    {
        "name": "one-a100",
        "container_resources": {"limits": {"nvidia.com/gpu": "1"}},
        "requirements": {"gpu_model": "a100"},
    },
    {
        "name": "eight-h100",
        "container_resources": {"limits": {"nvidia.com/gpu": "8"}},
        "requirements": {"gpu_model": "h100", "region": "eu-west-1"},
    },
    {"name": "too-big", "container_resources": {"limits": {"nvidia.com/gpu": "16"}}},
    {
        "name": "zoned",
        "node_selector": {"topology.kubernetes.io/zone": "z1"},
        "container_resources": {"requests": {"cpu": "4"}},
    },
]


@dataclass(frozen=True)
class Result:
    label: str
    clusters: int
    nodes_per_cluster: int
    shapes: int
    build_seconds: float
    decisions_per_second: float
    p50_us: float
    p99_us: float


def _node(rng: random.Random, cluster: int, index: int, shape: int) -> NodeInfo:
    cpu, memory, gpus, model = NODE_TYPES[shape % len(NODE_TYPES)]
    zone = shape // len(NODE_TYPES)
    allocatable = {"cpu": cpu, "memory": memory, "pods": 110, "ephemeral-storage": 200 * GiB}
    labels = {
        "kubernetes.io/hostname": f"c{cluster}-n{index}",
        "topology.kubernetes.io/zone": f"z{zone}",
        "node.kubernetes.io/instance-type": f"type-{shape % len(NODE_TYPES)}",
    }
    if gpus:
        allocatable["nvidia.com/gpu"] = gpus
        labels["nvidia.com/gpu.product"] = model or ""
    used = {"cpu": 0, "memory": 0, "pods": 0}
    # One node in ten idle, the rest running a few pods of the usual sizes.
    for _ in range(0 if rng.random() < 0.1 else rng.randint(1, 4)):
        pod_cpu, pod_memory, pod_gpus = rng.choice(POD_SIZES)
        if used["cpu"] + pod_cpu > cpu or used["memory"] + pod_memory > memory:
            continue
        if pod_gpus and used.get("nvidia.com/gpu", 0) + pod_gpus > gpus:
            continue
        used["cpu"] += pod_cpu
        used["memory"] += pod_memory
        used["pods"] += 1
        if pod_gpus:
            used["nvidia.com/gpu"] = used.get("nvidia.com/gpu", 0) + pod_gpus
    return NodeInfo(
        name=labels["kubernetes.io/hostname"],
        allocatable=allocatable,
        used=used,
        labels=labels,
        taints=(GPU_TAINT,) if gpus else (),
    )


def build_snapshot(
    clusters: int, nodes_per_cluster: int, shapes_per_cluster: int, seed: int = 7
) -> Snapshot:
    rng = random.Random(seed)
    defaults = PodDefaults.model_validate(
        {"gpu_tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    )
    states = []
    for c in range(clusters):
        info = ClusterInfo(
            name=f"cluster-{c:02d}",
            role=ClusterRole.IN_PLANE if c == 0 else ClusterRole.EXTERNAL,
            labels={"topology.kubernetes.io/region": "eu-west-1" if c % 2 else "us-east-1"},
            cost=CostTable(
                cpu_hour=0.03 + 0.001 * c,
                memory_gib_hour=0.004,
                gpu_hour={A100: 2.5 + 0.05 * c, H100: 4.5 + 0.05 * c},
            ),
            pod_defaults=defaults,
        )
        nodes = [_node(rng, c, i, i % shapes_per_cluster) for i in range(nodes_per_cluster)]
        states.append(ClusterState.build(info, health=Health.UP, nodes=nodes))
    return Snapshot.of(states)


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def measure(
    label: str, clusters: int, nodes_per_cluster: int, shapes_per_cluster: int, decisions: int
) -> Result:
    started = time.perf_counter()
    snapshot = build_snapshot(clusters, nodes_per_cluster, shapes_per_cluster)
    build_seconds = time.perf_counter() - started
    tasks: list[TaskSpec] = [parse_task_spec({"image": "busybox", **t}) for t in TASKS]
    for task in tasks:  # warm up caches (TaskSpec.requests) and the interpreter
        route(task, snapshot)
    gc.collect()
    timings = []
    began = time.perf_counter()
    for index in range(decisions):
        task = tasks[index % len(tasks)]
        t0 = time.perf_counter_ns()
        route(task, snapshot)
        timings.append((time.perf_counter_ns() - t0) / 1000)
    elapsed = time.perf_counter() - began
    timings.sort()
    shapes = sum(len(c.shapes) for c in snapshot.clusters)
    return Result(
        label=label,
        clusters=clusters,
        nodes_per_cluster=nodes_per_cluster,
        shapes=shapes,
        build_seconds=build_seconds,
        decisions_per_second=decisions / elapsed,
        p50_us=statistics.median(timings),
        p99_us=_percentile(timings, 0.99),
    )


def _print(results: Sequence[Result]) -> None:
    header = (
        f"{'scenario':<34} {'clusters':>8} {'nodes/cl':>9} {'shapes':>7} {'build s':>8} "
        f"{'dec/s':>8} {'p50 us':>8} {'p99 us':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.label:<34} {r.clusters:>8} {r.nodes_per_cluster:>9,} {r.shapes:>7} "
            f"{r.build_seconds:>8.2f} {r.decisions_per_second:>8,.0f} {r.p50_us:>8.0f} "
            f"{r.p99_us:>8.0f}"
        )
    print()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer decisions per scenario")
    args = parser.parse_args(argv)
    decisions = 600 if args.quick else 3000

    print("Headline (6 task kinds in rotation: CPU, GPU, region-bound, too big, zoned):")
    _print(
        [
            measure("10 clusters x 2,000 nodes", 10, 2_000, 12, decisions),
            measure("50 clusters x 5,000 nodes", 50, 5_000, 12, decisions // 3),
        ]
    )
    print("More nodes, same shapes (decision time should stay flat):")
    _print(
        [measure(f"10 x {n:,} nodes, 12 shapes", 10, n, 12, decisions) for n in (500, 2_000, 8_000)]
    )
    print("Same nodes, more shapes (decision time should grow with shapes):")
    _print([measure(f"10 x 2,000 nodes, {s} shapes", 10, 2_000, s, decisions) for s in (6, 24, 96)])


if __name__ == "__main__":
    main()
