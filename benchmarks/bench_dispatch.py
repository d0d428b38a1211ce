"""Dispatcher benchmark against the real stack (not a timed test; prints measured figures).

``python -m benchmarks.bench_dispatch [--jobs 500] [--qps 20 --qps 500] [--jobs-at 20=N]
[--baseline-commit REF] [--today-commit REF] [--tracked 5000] [--monitor-seconds 60]
[--skip-monitoring] [--skip-memory]``

1. Throughput, latency and API cost, once per client QPS (``--qps``, repeatable; default 20
   and 500; burst twice the QPS): ``--jobs`` tasks (``--jobs-at QPS=N`` for a QPS of its
   own) are submitted at once (16 client threads) to a ``dispatcher serve`` process with
   that QPS on every cluster; an admin watch on the clusters records when each pod appears
   and when it is Running. Reports jobs dispatched per second (first submit to last pod
   created), p50/p99 submit-to-created and submit-to-running; record writes per job from
   the dispatcher's own ``dispatcher_record_writes_total`` and, independently, from the
   plane apiserver's ``apiserver_request_total`` (resources ``dispatchjobs``, ``secrets``
   and ``configmaps``, the store before the CRD records) read before and after; the
   dispatcher's Kubernetes requests per job (``dispatcher_kube_api_requests_total``) and
   every apiserver's requests per job from all clients (schedulers and KWOK included).
   Each run has its own namespace (pods and records) and stops its dispatcher and deletes
   its pods before the next one, except the last, whose pods the next phases use.
   ``--baseline-commit REF`` also runs that commit's ``dispatcher serve`` (from a temporary
   ``git worktree`` under /tmp, removed afterwards; same interpreter and venv, the worktree
   first on ``PYTHONPATH``) with the same settings and load before each of today's runs,
   and prints the ratio today / baseline. ``--today-commit REF`` runs today's code the same
   way from a worktree of REF (a commit exactly, whatever the work tree holds); without it,
   from this checkout as it is (the start line says what it changes under ``dispatcher/``).
2. Monitoring cost: with the last run's pods running, the apiservers'
   ``apiserver_request_total`` (pods, nodes) is read before and after ``--monitor-seconds``
   with the dispatcher running, after a baseline window of the same length with it stopped;
   the difference per running pod per minute is the dispatcher's monitoring cost
   (KubernetesPodOperator polls every 2 s: 30 requests per pod per minute).
3. Memory: ``--tracked`` more jobs that must wait (the A100s are all taken) are submitted;
   the dispatcher's resident memory is read from /proc.

The load average is printed at the start, before each run and at the end. Runs on its own
stack instance (``KD_STACK_DIR``/``KD_STACK_PORT_BASE`` default to ``/tmp/kd-stack-bench``
and 32400) with enough CPU nodes for the pods.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import scratch_stack
from benchmarks.podwatch import PodTimes, watching
from dispatcher.client import DispatcherClient
from tests.stack.dispatcher_config import dispatcher_settings
from tests.stack.launcher import Stack, default_clusters
from tests.support import ADMIN_TOKEN, REPO, ServiceProcess

JOB_LABEL = "kube-dispatcher.dev/job-id"
#: Where job records live: the CRD and its env Secrets today, ConfigMaps before issue 11.
RECORD_RESOURCES = ("dispatchjobs", "secrets", "configmaps")
READ_VERBS = frozenset({"GET", "LIST", "WATCH"})
CLIENT_THREADS = 16


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# ----- observing: an admin watch (benchmarks.podwatch) and the apiservers' own counters ---
def _admin_metrics(stack: Stack, cluster: str) -> str:
    token = (Path(stack.state_dir) / "admin.token").read_text().strip()
    return httpx.get(
        f"{stack.server(cluster)}/metrics",
        headers={"Authorization": f"Bearer {token}"},
        verify=str(Path(stack.state_dir) / "pki" / "ca.crt"),
        timeout=30,
    ).text


def _samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, sample.value


def _apiserver_requests(stack: Stack, cluster: str) -> Counter[tuple[str, str, str, str]]:
    """``apiserver_request_total`` by (resource, subresource, verb, code)."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for labels, value in _samples(_admin_metrics(stack, cluster), "apiserver_request_total"):
        resource, subresource = labels.get("resource", ""), labels.get("subresource", "")
        counts[resource, subresource, labels.get("verb", ""), labels.get("code", "")] += value
    return counts


def _requests_total(
    stack: Stack, cluster: str, resources: tuple[str, ...] = ("pods", "nodes")
) -> float:
    return sum(v for k, v in _apiserver_requests(stack, cluster).items() if k[0] in resources)


def _dispatcher_counts(url: str) -> dict[str, Counter[str]]:
    """The dispatcher's record writes by verb/outcome and Kubernetes requests by cluster/verb."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    writes: Counter[str] = Counter()
    for labels, value in _samples(text, "dispatcher_record_writes_total"):
        writes[f"{labels['verb']}/{labels['outcome']}"] += value
    requests: Counter[str] = Counter()
    for labels, value in _samples(text, "dispatcher_kube_api_requests_total"):
        requests[f"{labels['cluster']}/{labels['verb']}"] += value
    return {"record_writes": writes, "kube_requests": requests}


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


# ----- the dispatcher under test: today's code or another commit's -----------------------
class Serve(ServiceProcess):
    """``dispatcher serve`` from the code in ``repo`` (this checkout, or a worktree)."""

    def imported_from(self) -> str:
        """Where the ``dispatcher`` package this process imports lives."""
        return subprocess.run(
            [sys.executable, "-c", "import dispatcher; print(dispatcher.__file__)"],
            cwd=self.repo,
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def validate(self) -> str | None:
        """The code's own ``validate-config`` verdict on the settings: None if valid."""
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "dispatcher.cli", "validate-config", str(self.config)],
            cwd=self.repo,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        return None if done.returncode == 0 else (done.stdout + done.stderr).strip()


@contextlib.contextmanager
def _worktree(commit: str) -> Iterator[Path]:
    """A detached ``git worktree`` of ``commit`` under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="kd-bench-worktree-")) / "repo"
    subprocess.run(  # noqa: S603
        ["git", "worktree", "add", "--detach", str(path), commit],  # noqa: S607
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(  # noqa: S603
            ["git", "worktree", "remove", "--force", str(path)],  # noqa: S607
            cwd=REPO,
            check=False,
            capture_output=True,
        )
        shutil.rmtree(path.parent, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=False)  # noqa: S607


# ----- one throughput run -----------------------------------------------------------------
@dataclass
class Run:
    code: str  # "today" or "baseline"
    repo: Path
    qps: float
    jobs: int


def _new_namespace(stack: Stack) -> str:
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    for spec in stack.clusters:
        with stack.kube(spec) as api:
            client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        stack.grant_task_namespace(spec, namespace)
    return namespace


def _delete_pods(stack: Stack, namespace: str) -> None:
    for spec in stack.clusters:
        with stack.kube(spec) as api:
            core = client.CoreV1Api(api)
            core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
            deadline = time.time() + 120
            while core.list_namespaced_pod(namespace).items and time.time() < deadline:
                time.sleep(0.5)


def _quiet(url: str, seconds: float = 3.0, timeout: float = 60.0) -> None:
    """Wait until the dispatcher makes no Kubernetes request for ``seconds``."""
    deadline = time.time() + timeout
    last = _dispatcher_counts(url)["kube_requests"]
    since = time.time()
    while time.time() < deadline and time.time() - since < seconds:
        time.sleep(0.5)
        now = _dispatcher_counts(url)["kube_requests"]
        if now != last:
            last, since = now, time.time()


def _figures(
    times: PodTimes, submitted: dict[str, float], began: float, submit_done: float
) -> dict[str, Any]:
    created = [times.created[j] for j in submitted if j in times.created]
    to_created = [times.created[j] - submitted[j] for j in submitted if j in times.created]
    to_running = [times.running[j] - submitted[j] for j in submitted if j in times.running]
    return {
        "pods_created": len(created),
        "pods_running": len(to_running),
        "submit_seconds": round(submit_done - began, 2),
        "dispatch_seconds": round(max(created) - began, 2),
        "jobs_per_second": round(len(created) / (max(created) - began), 1),
        "created_p50_s": round(statistics.median(to_created), 3),
        "created_p99_s": round(_percentile(to_created, 0.99), 3),
        "running_p50_s": round(statistics.median(to_running), 3),
        "running_p99_s": round(_percentile(to_running, 0.99), 3),
    }


def _costs(
    jobs: int,
    mine_before: dict[str, Counter[str]],
    mine_after: dict[str, Counter[str]],
    api_before: dict[str, Counter[tuple[str, str, str, str]]],
    api_after: dict[str, Counter[tuple[str, str, str, str]]],
) -> dict[str, Any]:
    """Requests per job, from the dispatcher's counters and from the apiservers'."""
    jobs = max(jobs, 1)
    writes = mine_after["record_writes"] - mine_before["record_writes"]
    requests = mine_after["kube_requests"] - mine_before["kube_requests"]
    plane = api_after["plane"] - api_before["plane"]
    stored = {k: v for k, v in plane.items() if k[0] in RECORD_RESOURCES}
    total = sum(sum((api_after[c] - api_before[c]).values()) for c in api_after)
    return {
        "record_writes_by_verb_outcome": dict(sorted(writes.items())),
        # None: the code measured has no such counter (before issue 11).
        "record_writes_per_job": (
            round(sum(writes.values()) / jobs, 2) if mine_after["record_writes"] else None
        ),
        "dispatcher_requests_by_cluster_verb": dict(sorted(requests.items())),
        "dispatcher_requests_per_job": round(sum(requests.values()) / jobs, 2),
        "apiserver_record_requests": {
            "/".join(p for p in k if p): v for k, v in sorted(stored.items())
        },
        "apiserver_record_writes_per_job": round(
            sum(v for k, v in stored.items() if k[2] not in READ_VERBS) / jobs, 2
        ),
        "apiserver_record_reads_per_job": round(
            sum(v for k, v in stored.items() if k[2] in READ_VERBS) / jobs, 2
        ),
        "apiserver_requests_per_job": round(total / jobs, 2),
        "plane_apiserver_requests_per_job": round(sum(plane.values()) / jobs, 2),
    }


def _throughput(stack: Stack, run: Run) -> tuple[dict[str, Any], Serve, str]:
    """Submit ``run.jobs`` tasks at once; the figures, the still running dispatcher and its
    namespace."""
    namespace = _new_namespace(stack)
    folder = Path(stack.state_dir) / namespace
    config = dispatcher_settings(
        stack,
        folder,
        namespace=namespace,
        service={"log_level": "warning"},
        # Client-side rate limits are per-cluster settings; the default (20 QPS) suits
        # shared production apiservers.
        client={"qps": run.qps, "burst": int(2 * run.qps)},
    )
    service = Serve(config, folder / "dispatcher.log", run.repo)
    results: dict[str, Any] = {
        "code": run.code,
        "qps": run.qps,
        "burst": int(2 * run.qps),
        "jobs": run.jobs,
        "load_before": _load(),
    }
    problem = service.validate()
    if problem:
        raise RuntimeError(f"{run.code}: its validate-config refuses the settings:\n{problem}")
    results["imports"] = service.imported_from()
    if not results["imports"].startswith(str(run.repo)):
        raise RuntimeError(f"{run.code}: imports {results['imports']}, not from {run.repo}")
    service.start()
    try:
        measured = _load_run(stack, service, namespace, run.jobs)
    except BaseException:
        service.stop()
        raise
    results.update(measured)
    results["load_after"] = _load()
    return results, service, namespace


def _load_run(stack: Stack, service: Serve, namespace: str, count: int) -> dict[str, Any]:
    """Submit ``count`` tasks at once and wait until their pods run; the figures."""
    clusters = [s.name for s in stack.clusters]
    with (
        watching(stack, namespace, JOB_LABEL) as times,
        DispatcherClient(service.url, token=ADMIN_TOKEN, timeout=120) as api,
    ):
        api_before = {c: _apiserver_requests(stack, c) for c in clusters}
        mine_before = _dispatcher_counts(service.url)
        submitted: dict[str, float] = {}

        def submit(i: int) -> None:
            started = time.time()
            job, _ = api.submit(_task(f"b{i}"))
            submitted[job["id"]] = started

        began = time.time()
        with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
            list(pool.map(submit, range(count)))
        submit_done = time.time()
        deadline = time.time() + 900
        while time.time() < deadline and not all(j in times.running for j in submitted):
            time.sleep(0.1)
        _quiet(service.url)
        api_after = {c: _apiserver_requests(stack, c) for c in clusters}
        mine_after = _dispatcher_counts(service.url)
        states = Counter(job["state"] for job in api.jobs())

    return {
        **_figures(times, submitted, began, submit_done),
        "states": dict(states),
        **_costs(len(submitted), mine_before, mine_after, api_before, api_after),
    }


# ----- the report -------------------------------------------------------------------------
COLUMNS = (
    ("jobs_per_second", "jobs/s"),
    ("created_p50_s", "created p50 s"),
    ("created_p99_s", "created p99 s"),
    ("running_p50_s", "running p50 s"),
    ("running_p99_s", "running p99 s"),
    ("record_writes_per_job", "record writes/job (dispatcher)"),
    ("apiserver_record_writes_per_job", "record writes/job (apiserver)"),
    ("dispatcher_requests_per_job", "dispatcher requests/job"),
    ("apiserver_requests_per_job", "apiserver requests/job (all clients)"),
)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["code", "qps", "jobs", *(title for _, title in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["code"], f"{row['qps']:g}", str(row["jobs"])]
        cells += ["-" if row.get(key) is None else f"{row[key]:g}" for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    by = {(r["code"], r["qps"]): r for r in rows}
    for (code, qps), row in by.items():
        base = by.get(("baseline", qps))
        if code != "today" or base is None:
            continue
        ratios = []
        for key, title in COLUMNS:
            if row.get(key) is not None and base.get(key):
                ratios.append(f"{title} {row[key] / base[key]:.2f}")
        lines.append(f"today / baseline at QPS {qps:g}: " + ", ".join(ratios))
    return "\n".join(lines)


def _rev(ref: str) -> str:
    return subprocess.run(  # noqa: S603
        ["git", "rev-parse", "--short", ref],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def _jobs_for(args: argparse.Namespace, qps: float) -> int:
    for item in args.jobs_at:
        at, _, jobs = item.partition("=")
        if float(at) == qps:
            return int(jobs)
    return int(args.jobs)


def main() -> int:  # noqa: PLR0915 - a script, step by step
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--qps", type=float, action="append", help="repeatable; default 20, 500")
    parser.add_argument("--jobs-at", action="append", default=[], metavar="QPS=N")
    parser.add_argument("--baseline-commit", metavar="REF")
    parser.add_argument(
        "--today-commit", metavar="REF", help="run today's code from a worktree of REF"
    )
    parser.add_argument("--tracked", type=int, default=5000)
    parser.add_argument("--monitor-seconds", type=float, default=60.0)
    parser.add_argument("--skip-monitoring", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    scratch_stack("/tmp/kd-stack-bench", 32400)  # noqa: S108 - a scratch stack
    # Lowest QPS first: the monitoring and memory phases use the last (highest) run.
    qps_list = sorted(set(args.qps or [20.0, 500.0]))
    head = _rev("HEAD")
    dirty = subprocess.run(
        ["git", "status", "--short", "--", "dispatcher"],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    changed = [line for line in dirty if line.strip()]
    print(
        f"start: load average {_load()}, commit {head} (dispatcher/ changed in the work tree: "
        f"{changed or 'nothing'}), qps {qps_list}",
        flush=True,
    )
    most = max(_jobs_for(args, q) for q in qps_list)
    plane_nodes = max(3, most // 100 + 2)
    stack = Stack(clusters=default_clusters(plane_nodes=plane_nodes))
    was_up = stack.is_up()
    stack.up()
    with stack.kube("plane") as api:
        plane_nodes = len(client.CoreV1Api(api).list_node().items)
    print(f"stack: {plane_nodes} plane nodes (up before: {was_up})", flush=True)
    rows: list[dict[str, Any]] = []
    service: Serve | None = None
    with contextlib.ExitStack() as cleanup:
        today = REPO
        if args.today_commit:
            today = cleanup.enter_context(_worktree(args.today_commit))
            print(f"today: {_rev(args.today_commit)} in {today}", flush=True)
        baseline: Path | None = None
        if args.baseline_commit:
            baseline = cleanup.enter_context(_worktree(args.baseline_commit))
            print(f"baseline: {_rev(args.baseline_commit)} in {baseline}", flush=True)
        namespace = ""
        try:
            runs: list[Run] = []
            for qps in qps_list:
                if baseline is not None:
                    runs.append(Run("baseline", baseline, qps, _jobs_for(args, qps)))
                runs.append(Run("today", today, qps, _jobs_for(args, qps)))
            for i, run in enumerate(runs):
                try:
                    results, service, namespace = _throughput(stack, run)
                except RuntimeError as exc:
                    if run.code != "baseline":
                        raise
                    print(f"baseline skipped: {exc}", flush=True)
                    continue
                results["plane_nodes"] = plane_nodes
                rows.append(results)
                print(f"dispatch: {json.dumps(results)}", flush=True)
                if i < len(runs) - 1:
                    service.stop()
                    _delete_pods(stack, namespace)
            print("\n" + _table(rows) + "\n", flush=True)
            if service is None:
                return 1
            if not args.skip_monitoring:
                _monitoring(stack, service, namespace, args.monitor_seconds)
            if not args.skip_memory:
                _memory(service, args.tracked)
        finally:
            if service is not None:
                service.stop()
                if namespace:  # the next user of a kept stack starts without our pods
                    _delete_pods(stack, namespace)
            if not was_up and os.environ.get("KD_STACK_KEEP") != "1":
                stack.down()
    print(f"end: load average {_load()}", flush=True)
    return 0


def _monitoring(stack: Stack, service: Serve, namespace: str, seconds: float) -> None:
    """Requests per running pod per minute: a window with the dispatcher, minus one without."""
    with DispatcherClient(service.url, token=ADMIN_TOKEN, timeout=60) as api:
        running = len(api.jobs(state="running"))
    service.stop()
    clusters = [s.name for s in stack.clusters]
    before = sum(_requests_total(stack, c) for c in clusters)
    time.sleep(seconds)
    baseline = sum(_requests_total(stack, c) for c in clusters) - before
    service.start()
    time.sleep(10)  # start-up lists are not monitoring
    before = sum(_requests_total(stack, c) for c in clusters)
    time.sleep(seconds)
    during = sum(_requests_total(stack, c) for c in clusters) - before
    minutes = seconds / 60
    results = {
        "namespace": namespace,
        "running_pods": running,
        "monitor_seconds": seconds,
        "monitor_requests_per_minute": round((during - baseline) / minutes, 1),
        "monitor_requests_per_pod_per_minute": round(
            (during - baseline) / minutes / max(running, 1), 4
        ),
        "load": _load(),
    }
    print(f"monitoring: {json.dumps(results)}", flush=True)


def _memory(service: Serve, tracked: int) -> None:
    """Resident memory with many tracked jobs: fill the A100s, then queue jobs that wait."""
    with DispatcherClient(service.url, token=ADMIN_TOKEN, timeout=60) as api:
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

        with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
            list(pool.map(queue, range(tracked)))
        time.sleep(5)
        gauges = httpx.get(f"{service.url}/metrics", timeout=30).text
        results = {
            "tracked_jobs": int(sum(v for _, v in _samples(gauges, "dispatcher_jobs"))),
            "rss_mib_before_tracked": round(rss_before, 1),
            "rss_mib_with_tracked": round(_rss_mib(pid), 1),
            "load": _load(),
        }
    print(f"memory: {json.dumps(results)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
