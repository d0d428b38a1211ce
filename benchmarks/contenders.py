"""The contenders of ``benchmarks.compare``: the same tasks, run three ways.

A task is a pod in ``plane`` with a tiny CPU request, labelled ``TASK_LABEL=<key>`` (how
the admin watch of ``benchmarks.podwatch`` knows it) and annotated to run ``seconds`` on
the stack's simulated kubelet, then succeed; when it has finished, its pod is deleted.

* ``raw`` (``python -m benchmarks.contenders raw ...``, its own process): a plain
  kubernetes client. One list and watch of the namespace, ``threads`` threads creating the
  pods, each request (create, delete) through the dispatcher's own token bucket at ``qps``
  (burst twice that, as the dispatcher's clients), and a delete as soon as the watch sees
  a pod finished. It counts every request it sends, so the audit count can be checked.
* ``kpo`` (``python -m benchmarks.contenders kpo ...``, one process per lane): Airflow's
  real ``KubernetesPodOperator`` from the cncf provider, one task per pod (the DAG file
  ``kpo_dag.py``, copied into the lane's dags folder), run by ``dag.test()``, which runs a
  DAG's tasks one after another: concurrency comes from several lanes (processes, each
  with its own copy of a migrated SQLite metadata DB) running at once.
  ``get_logs=False``: the stack's simulated kubelet keeps a log follow open after the
  container exits, which a real kubelet closes, so following logs would hang each task
  until its read timeout. Otherwise the operator's defaults (it polls the pod while it
  starts and runs, and deletes it at the end).
* the dispatcher is driven from ``benchmarks.compare`` itself (a ``dispatcher serve``
  process and 16 client threads submitting), so it has no entry point here.

Each process prints one JSON line (``RESULT {...}``): when each task was submitted (the
moment the contender began on it), its CPU seconds from first submission to the end,
its peak RSS, and (raw) the requests it sent. I/O: talks to the test stack's apiservers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from dispatcher.clusters.pacing import TokenBucket

#: The label that names a task (its value is the task's key) on every contender's pod.
TASK_LABEL = "bench.dispatcher.dev/task"
IMAGE = "bench:1"
REQUESTS = {"cpu": "10m", "memory": "16Mi"}
RESULT = "RESULT "
FINISHED_PHASES = ("Succeeded", "Failed")


def sim_annotations(seconds: float) -> dict[str, str]:
    """The stack's simulated kubelet runs the container ``seconds``, then it succeeds."""
    return {"sim.dispatcher.dev/succeed-after": f"{seconds:g}s"}


def usage() -> tuple[float, float]:
    """This process's CPU seconds (user + system) and peak RSS in MiB (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime, own.ru_maxrss / 1024


def _api(kubeconfig: str, pool: int) -> client.ApiClient:
    conf = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
    conf.connection_pool_maxsize = pool
    return client.ApiClient(conf)


# ----- raw: a plain kubernetes client ------------------------------------------------------
class _Counted:
    """Requests sent, by verb (the contender's own account, checked against the audit)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, int] = {}

    def add(self, verb: str) -> None:
        with self.lock:
            self.sent[verb] = self.sent.get(verb, 0) + 1


def run_raw(
    kubeconfig: str, namespace: str, keys: list[str], *, seconds: float, qps: float, threads: int
) -> dict[str, Any]:
    api = _api(kubeconfig, threads + 4)
    core = client.CoreV1Api(api)
    bucket = TokenBucket(qps, max(1, int(2 * qps)), clock=time.monotonic, sleep=time.sleep)
    counted = _Counted()
    submitted: dict[str, float] = {}
    left = set(keys)
    all_gone = threading.Event()
    deleting: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=threads)

    def create(key: str) -> None:
        submitted[key] = time.time()
        bucket.acquire()
        counted.add("create")
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {
                    "name": key,
                    "labels": {TASK_LABEL: key},
                    "annotations": sim_annotations(seconds),
                },
                "spec": {
                    "containers": [
                        {"name": "main", "image": IMAGE, "resources": {"requests": REQUESTS}}
                    ]
                },
            },
        )

    def delete(name: str) -> None:
        bucket.acquire()
        counted.add("delete")
        try:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def follow(version: str) -> None:
        while left:
            counted.add("watch")
            for event in watch.Watch().stream(
                core.list_namespaced_pod,
                namespace,
                label_selector=TASK_LABEL,
                resource_version=version,
                timeout_seconds=60,
                deserialize=False,
            ):
                pod = event["object"]
                metadata = pod["metadata"]
                version = metadata["resourceVersion"]
                key = (metadata.get("labels") or {}).get(TASK_LABEL)
                if key not in left:
                    continue
                if event["type"] == "DELETED":
                    left.discard(key)
                    if not left:
                        all_gone.set()
                        return
                elif (pod.get("status") or {}).get(
                    "phase"
                ) in FINISHED_PHASES and key not in deleting:
                    deleting.add(key)
                    pool.submit(delete, metadata["name"])

    counted.add("list")
    version = core.list_namespaced_pod(
        namespace, label_selector=TASK_LABEL
    ).metadata.resource_version
    watcher = threading.Thread(target=follow, args=(version,), daemon=True)
    watcher.start()
    cpu_before, _ = usage()
    creates = [pool.submit(create, key) for key in keys]
    for future in creates:
        future.result()
    if not all_gone.wait(600):
        raise SystemExit(f"raw: {len(left)} pods still there after 600 s: {sorted(left)[:5]}")
    pool.shutdown(wait=True)
    cpu_after, rss = usage()
    return {
        "submitted": submitted,
        "cpu_seconds": round(cpu_after - cpu_before, 3),
        "peak_rss_mib": round(rss, 1),
        "requests_sent": counted.sent,
    }


# ----- kpo: Airflow's KubernetesPodOperator through dag.test() -------------------------------
KPO_DAG = Path(__file__).with_name("kpo_dag.py")


def run_kpo_lane(
    kubeconfig: str, namespace: str, keys: list[str], *, seconds: float, lane: int
) -> dict[str, Any]:
    """One lane: ``kpo_dag.py``, one KubernetesPodOperator per key, run by ``dag.test()``
    (one task after another). Airflow is configured by the environment (``AIRFLOW_HOME``
    with a migrated DB, ``AIRFLOW__CORE__DAGS_FOLDER``), where the DAG file is copied."""
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    submitted_file = dags.parent / "submitted.jsonl"
    settings = dags.parent / "lane.json"
    settings.write_text(
        json.dumps(
            {
                "keys": keys,
                "namespace": namespace,
                "kubeconfig": kubeconfig,
                "lane": lane,
                "image": IMAGE,
                "label": TASK_LABEL,
                "annotations": sim_annotations(seconds),
                "requests": REQUESTS,
                "submitted_file": str(submitted_file),
            }
        )
    )
    os.environ["KD_COMPARE_KPO_LANE"] = str(settings)
    installed = dags / KPO_DAG.name
    shutil.copy(KPO_DAG, installed)
    spec = importlib.util.spec_from_file_location("compare_kpo_dag", installed)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {installed}")
    module = importlib.util.module_from_spec(spec)
    cpu_before, _ = usage()
    spec.loader.exec_module(module)
    dag_run = module.dag.test()
    cpu_after, rss = usage()
    submitted = {}
    for line in submitted_file.read_text().splitlines():
        record = json.loads(line)
        submitted.setdefault(record["key"], record["t"])
    return {
        "submitted": submitted,
        "cpu_seconds": round(cpu_after - cpu_before, 3),
        "peak_rss_mib": round(rss, 1),
        "state": str(dag_run.state),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contenders")
    parser.add_argument("contender", choices=["raw", "kpo"])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--keys", required=True, help="comma-separated task keys")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--qps", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--lane", type=int, default=0)
    args = parser.parse_args(argv)
    keys = args.keys.split(",")
    if args.contender == "raw":
        result = run_raw(
            args.kubeconfig,
            args.namespace,
            keys,
            seconds=args.seconds,
            qps=args.qps,
            threads=args.threads,
        )
    else:
        result = run_kpo_lane(
            args.kubeconfig, args.namespace, keys, seconds=args.seconds, lane=args.lane
        )
    sys.stdout.flush()
    sys.stdout.write(RESULT + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
