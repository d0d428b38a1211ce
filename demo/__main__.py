"""``make demo``: the dispatcher routing real tasks across three local clusters.

1. Brings up the test stack (plane, gpu-a100, gpu-h100 and Vault; built on first use).
2. Starts ``dispatcher serve`` with a configuration for those clusters: credentials for
   gpu-a100 come from a kubeconfig in Vault KV, for gpu-h100 from Vault's Kubernetes
   secrets engine.
3. Submits a mix of tasks and shows a live table of jobs and clusters while they run:
   CPU work goes to plane, A100 and H100 work to their clusters, one task waits for GPUs,
   an impossible one is rejected with its explanation, one is OOM-killed, and one moves to
   gpu-h100 when gpu-a100's API server is stopped.
4. Prints a summary read from the dispatcher's Prometheus metrics.

Set KD_STACK_KEEP=1 to leave the stack running afterwards.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from dispatcher.cli import clusters_table, jobs_table
from tests.stack import Stack
from tests.stack.dispatcher_config import dispatcher_settings
from tests.support import ServiceProcess

console = Console(highlight=False)
FINISHED = {"succeeded", "failed", "cancelled", "rejected"}


def _task(
    name: str,
    *,
    gpus: int = 0,
    model: str | None = None,
    cpu: str = "2",
    annotations: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "image": "ghcr.io/example/trainer:1.4",
        "cmds": ["python", "-m", "train"],
        "container_resources": {
            "requests": {"cpu": cpu, "memory": "8Gi"},
            "limits": {"memory": "16Gi"},
        },
        "annotations": annotations or {},
        "idempotency_key": f"demo/{name}/{uuid.uuid4().hex[:8]}",
    }
    if gpus:
        spec["container_resources"]["limits"]["nvidia.com/gpu"] = str(gpus)
    if model:
        spec["requirements"] = {"gpu_model": model}
    spec.update(extra)
    return spec


def _ok(after: str) -> dict[str, str]:
    return {
        "sim.dispatcher.dev/succeed-after": after,
        "sim.dispatcher.dev/termination-message": '{"status": "ok"}',
    }


TASKS = [
    # Lands on gpu-a100 (cheapest GPUs), then moves when gpu-a100 goes down.
    ("evaluate", _task("evaluate", gpus=2, annotations=_ok("25s"))),
    ("prep", _task("prep", annotations=_ok("4s"))),
    ("train-a100", _task("train-a100", gpus=8, model="A100", annotations=_ok("6s"))),
    ("batch-a100-1", _task("batch-a100-1", gpus=8, model="A100", annotations=_ok("8s"))),
    ("batch-a100-2", _task("batch-a100-2", gpus=8, model="A100", annotations=_ok("8s"))),
    # No A100 node has 8 free GPUs until train-a100 finishes: it waits.
    ("must-wait", _task("must-wait", gpus=8, model="A100", annotations=_ok("3s"))),
    ("finetune-h100", _task("finetune-h100", gpus=8, model="H100", annotations=_ok("6s"))),
    ("too-big", _task("too-big", gpus=16, model="A100")),
    (
        "oom",
        _task(
            "oom",
            annotations={
                "sim.dispatcher.dev/fail-after": "3s",
                "sim.dispatcher.dev/exit-code": "137",
                "sim.dispatcher.dev/reason": "OOMKilled",
            },
        ),
    ),
]


def _metric_lines(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith("dispatcher_"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def _summary(url: str) -> Table:
    values = _metric_lines(httpx.get(f"{url}/metrics", timeout=10).text)
    table = Table(title="metrics summary (from /metrics)", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(values.items()):
        if (
            re.match(
                r"dispatcher_(jobs_finished_total|failovers_total|submissions_total|"
                r"routing_decisions_total|cluster_up|cluster_gpus_free)\{",
                name,
            )
            and value
        ):
            table.add_row(name, f"{value:g}")
    count = values.get("dispatcher_submit_to_running_seconds_count", 0.0)
    for name, value in values.items():
        if name.startswith("dispatcher_submit_to_running_seconds_count{"):
            count += value
    total = sum(
        v for n, v in values.items() if n.startswith("dispatcher_submit_to_running_seconds_sum")
    )
    if count:
        table.add_row("mean submit-to-running (s)", f"{total / count:.2f}")
    return table


def _fresh_namespace(stack: Stack) -> str:
    """A namespace of its own in every cluster, so a re-run starts from nothing."""
    namespace = f"demo-{uuid.uuid4().hex[:6]}"
    for spec in stack.clusters:
        with stack.kube(spec) as api:
            client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        stack.grant_task_namespace(spec, namespace)
    return namespace


def main() -> int:
    started = time.monotonic()
    stack = Stack(out=sys.stderr)
    was_up = stack.is_up()
    console.rule("kube-dispatcher demo")
    console.print(
        "1. bringing up the stack: plane, gpu-a100 (4x8 A100), gpu-h100 (2x8 H100), Vault"
    )
    stack.up()
    namespace = _fresh_namespace(stack)
    folder = Path(stack.state_dir) / namespace
    config = dispatcher_settings(
        stack,
        folder,
        namespace=namespace,
        service={"log_json": True},
        # The demo shows a failover: gpu-a100's running jobs are relaunched elsewhere 6 s
        # after it stops answering (at-least-once; the default policy waits for it).
        clusters={
            "gpu-a100": {"on_unreachable": {"action": "relaunch", "relaunch_after_seconds": 6}}
        },
    )
    console.print(f"2. starting `dispatcher serve --config {config}`")
    service = ServiceProcess(config, folder / "dispatcher.log")
    service.start()
    stopped_a100 = restarted_a100 = False
    try:
        with service.client() as api:
            console.print(f"3. submitting {len(TASKS)} tasks")
            for _, spec in TASKS:
                api.submit(spec)
            with Live(console=console, refresh_per_second=2) as live:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    jobs = api.jobs()
                    by_name = {j["name"]: j for j in jobs}
                    live.update(
                        Group(
                            jobs_table(
                                jobs, title=f"jobs ({time.monotonic() - started:.0f}s)", ids=False
                            ),
                            clusters_table(api.clusters()),
                        )
                    )
                    others_done = all(
                        j["state"] in FINISHED for n, j in by_name.items() if n != "evaluate"
                    )
                    evaluate = by_name.get("evaluate", {})
                    if not stopped_a100 and others_done and evaluate.get("cluster") == "gpu-a100":
                        live.console.print("[bold red]>>> stopping gpu-a100's API server[/]")
                        stack.stop_apiserver("gpu-a100")
                        stopped_a100 = True
                    if (
                        stopped_a100
                        and not restarted_a100
                        and evaluate.get("cluster") == "gpu-h100"
                    ):
                        live.console.print(
                            "[bold green]>>> evaluate moved to gpu-h100; restarting gpu-a100[/]"
                        )
                        stack.start_apiserver("gpu-a100")
                        restarted_a100 = True
                    if all(j["state"] in FINISHED for j in jobs) and len(jobs) == len(TASKS):
                        live.update(
                            Group(
                                jobs_table(
                                    jobs,
                                    title=f"jobs ({time.monotonic() - started:.0f}s)",
                                    ids=False,
                                ),
                                clusters_table(api.clusters()),
                            )
                        )
                        break
                    time.sleep(0.5)
            console.print(_summary(service.url))
            jobs = {j["name"]: j for j in api.jobs()}
            rejected = jobs["too-big"]
            console.print(f"[bold]too-big was rejected:[/] {rejected['message']}")
            console.print(f"[bold]oom:[/] {jobs['oom']['message']}")
    finally:
        service.stop()
        if stopped_a100 and not restarted_a100:
            stack.start_apiserver("gpu-a100")
        if not was_up and os.environ.get("KD_STACK_KEEP") != "1":
            stack.down()
    return _verdict(jobs, time.monotonic() - started)


def _verdict(jobs: dict[str, dict[str, Any]], elapsed: float) -> int:
    """Exit status: 0 when every task ended where and how the demo expects."""
    expected = {
        "prep": "plane",
        "train-a100": "gpu-a100",
        "finetune-h100": "gpu-h100",
        "must-wait": "gpu-a100",
        "evaluate": "gpu-h100",
    }
    wrong = {
        n: jobs[n]["cluster"]
        for n, c in expected.items()
        if jobs[n]["cluster"] != c or jobs[n]["state"] != "succeeded"
    }
    if jobs["too-big"]["state"] != "rejected":
        wrong["too-big"] = jobs["too-big"]["state"]
    if jobs["oom"]["failure"] != "oom-killed":
        wrong["oom"] = str(jobs["oom"]["failure"])
    console.rule(f"done in {elapsed:.0f}s" + (f" — UNEXPECTED: {wrong}" if wrong else ""))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
