"""The dispatcher side by side with a plain client and KubernetesPodOperator: one run, one
stack, the same tasks (not a timed test; prints measured figures).

``python -m benchmarks.compare [--tasks 100] [--seconds 20] [--raised-qps 500]
[--kpo-tasks 8] [--kpo-lanes 4] [--contenders raw,dispatcher,kpo] [--json FILE]``

Contenders (``benchmarks.contenders`` says how each runs a task):

1. ``raw`` at the dispatcher's default QPS (20) and at ``--raised-qps``: a plain kubernetes
   client creating, watching and deleting the pods, every request through a token bucket
   at that QPS (burst twice that, as the dispatcher's);
2. ``dispatcher`` at its default client settings (QPS 20, burst 40 per cluster) and at
   ``--raised-qps`` (burst twice that): a ``dispatcher serve`` process, ``--tasks`` tasks
   submitted at once by 16 client threads, pinned to ``plane`` like the others' pods;
3. ``kpo``: Airflow's KubernetesPodOperator, ``--kpo-tasks`` tasks in ``--kpo-lanes``
   ``dag.test()`` processes running at once (``dag.test()`` runs one task at a time).

Each contender runs in a fresh namespace of ``plane`` with its own identity (raw and kpo:
a ServiceAccount that may manage pods there; the dispatcher: its own
identities in the three clusters). Figures per contender:

* tasks/s: tasks / (first submit → last pod created), and the wall time to the last pod
  deleted;
* submit → pod created and → Running, p50/p99, from an admin watch (``benchmarks.podwatch``);
  "submit" is when the contender began on the task (raw: a thread takes it; dispatcher: the
  POST starts; kpo: the operator's execute starts);
* API requests the contender's identity sent, counted from the apiservers' own audit logs
  (``tests.stack.audit``; the stack runs with ``audit=True``) from the contender's start to
  its last pod deleted: per task, per running pod-minute (pod-minutes from the watch:
  Running → finished), and the reads (get, list, watch) naming a task's pod while it ran,
  per running pod-minute (what polling costs).
  The dispatcher's start-up requests (lists and watches, before the first submit) are
  reported apart. raw's own count of what it sent is printed next to the audit's;
* CPU seconds of the controlling process from first submit to the end, and its peak RSS
  (the dispatcher: ``dispatcher serve``, read from /proc; kpo: summed over its lanes, each
  from before it parses the DAG to the end of ``dag.test()``).

Then the ratios dispatcher/raw at the same QPS and dispatcher/kpo. Runs on its own stack
(``KD_STACK_DIR``/``KD_STACK_PORT_BASE`` default to ``/tmp/kd-stack-compare`` and 32600),
started with an audit log; a stack already up without one is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from pydantic import ValidationError

from benchmarks import scratch_stack
from benchmarks.bench_dispatch import Serve
from benchmarks.contenders import IMAGE, REQUESTS, RESULT, TASK_LABEL, sim_annotations
from benchmarks.podwatch import PodTimes, watching
from dispatcher.client import DispatcherClient
from dispatcher.settings import ClientSettings
from tests.stack.audit import AuditLog, Request, count
from tests.stack.dispatcher_config import dispatcher_settings
from tests.stack.launcher import (
    DISPATCHER_NAMESPACE,
    DISPATCHER_SA,
    RESTRICTED_SA,
    TASK_NAMESPACE,
    TASK_NAMESPACE_LABELS,
    Stack,
    default_clusters,
    kubeconfig_dict,
)
from tests.stack.pki import Pki
from tests.support import ADMIN_TOKEN, REPO

CLIENT_THREADS = 16
KPO_PROVIDER = "airflow.providers.cncf.kubernetes"
NO_PROVIDER = (
    "the kpo contender needs apache-airflow-providers-cncf-kubernetes in this environment "
    "(pip install 'kube-dispatcher[airflow]' apache-airflow-providers-cncf-kubernetes); "
    "leave kpo out of --contenders otherwise"
)
#: The dispatcher's identities: its ServiceAccount in plane, the restricted one elsewhere.
DISPATCHER_USERS = frozenset(
    {
        f"system:serviceaccount:{DISPATCHER_NAMESPACE}:{DISPATCHER_SA}",
        f"system:serviceaccount:{TASK_NAMESPACE}:{RESTRICTED_SA}",
    }
)
RUN_TIMEOUT = 900.0
READ_VERBS = frozenset({"get", "list", "watch"})
#: What raw and kpo may do in their namespace (a Role of its own: the aggregated
#: ClusterRoles such as ``admin`` stay empty in a stack without kube-controller-manager).
CONTENDER_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["pods/log", "pods/exec", "events"], "verbs": ["*"]},
]
#: The dispatcher's default client QPS per cluster: raw runs at it too.
DEFAULT_QPS = ClientSettings().qps


def provider_installed() -> bool:
    """Whether the cncf provider (KubernetesPodOperator) can be imported here."""
    try:
        return find_spec(KPO_PROVIDER) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Options:
    tasks: int = 100
    seconds: float = 20.0
    raised_qps: float = 500.0
    kpo_tasks: int = 8
    kpo_lanes: int = 4
    contenders: tuple[str, ...] = ("raw", "dispatcher", "kpo")


@dataclass
class Outcome:
    """What one contender's run produced, before the figures are drawn from it."""

    name: str
    qps: float | None
    keys: list[str]
    submitted: dict[str, float]
    times: PodTimes
    requests: list[Request]
    ended: float
    cpu_seconds: float
    peak_rss_mib: float
    extra: dict[str, Any] = field(default_factory=dict)


# ----- the stack: namespaces, identities, audit ---------------------------------------------
def _namespace(stack: Stack, prefix: str) -> str:
    name = f"cmp-{prefix}-{uuid.uuid4().hex[:6]}"
    for spec in stack.clusters:
        with stack.kube(spec) as api:
            client.CoreV1Api(api).create_namespace(
                {"metadata": {"name": name, "labels": TASK_NAMESPACE_LABELS}}
            )
        stack.grant_task_namespace(spec, name)
    return name


def _identity(stack: Stack, namespace: str, name: str, folder: Path) -> tuple[str, str]:
    """A ServiceAccount of ``plane`` that may run pods in ``namespace`` (``CONTENDER_RULES``):
    its kubeconfig file and its user name in the audit log."""
    with stack.kube("plane") as api:
        client.CoreV1Api(api).create_namespaced_service_account(
            namespace, {"metadata": {"name": name}}
        )
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role(
            namespace, {"metadata": {"name": f"{name}-pods"}, "rules": CONTENDER_RULES}
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": f"{name}-pods"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": f"{name}-pods",
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
    token = stack.service_account_token("plane", namespace, name, seconds=24 * 3600)
    conf = kubeconfig_dict(
        "plane",
        stack.server("plane"),
        Pki(stack.state_dir / "pki").ca_pem(),
        token,
        namespace=namespace,
    )
    path = folder / f"{name}.kubeconfig"
    path.write_text(yaml.safe_dump(conf))
    path.chmod(0o600)
    return str(path), f"system:serviceaccount:{namespace}:{name}"


class Audit:
    """The audit logs of every apiserver, read from a mark."""

    def __init__(self, stack: Stack) -> None:
        if not stack.audited():
            raise SystemExit(
                f"the stack at {stack.state_dir} runs without an audit log: stop it "
                "(`python -m tests.stack down`) or choose another KD_STACK_DIR; this "
                "benchmark starts its stack with one"
            )
        self.logs = {spec.name: AuditLog(stack.audit_log(spec)) for spec in stack.clusters}

    def mark(self) -> None:
        for log in self.logs.values():
            log.mark()

    def read(self, users: frozenset[str], until: float) -> list[Request]:
        found: list[Request] = []
        for log in self.logs.values():
            found += [r for r in log.read() if r.user in users and r.received <= until]
        return found


def _wait_gone(times: PodTimes, keys: list[str], timeout: float = RUN_TIMEOUT) -> float:
    """Wait until the watch saw every task's pod deleted; the moment of the last."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(k in times.deleted for k in keys):
            return max(times.deleted[k] for k in keys)
        time.sleep(0.2)
    missing = [k for k in keys if k not in times.deleted]
    raise RuntimeError(f"{len(missing)} pods not deleted after {timeout:.0f} s: {missing[:5]}")


def _child(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "benchmarks.contenders", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


def _result(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    proc.wait(RUN_TIMEOUT)
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(text.splitlines()[-30:])
        raise RuntimeError(f"contender exited {proc.returncode} ({log}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT))
    return result


# ----- the contenders -----------------------------------------------------------------------
def run_raw(stack: Stack, audit: Audit, options: Options, qps: float) -> Outcome:
    namespace = _namespace(stack, "raw")
    folder = stack.state_dir / namespace
    folder.mkdir()
    kubeconfig, user = _identity(stack, namespace, "raw", folder)
    keys = [f"raw-{i}" for i in range(options.tasks)]
    audit.mark()
    with watching(stack, namespace, TASK_LABEL, ("plane",)) as times:
        proc = _child(
            [
                "raw",
                f"--kubeconfig={kubeconfig}",
                f"--namespace={namespace}",
                f"--keys={','.join(keys)}",
                f"--seconds={options.seconds}",
                f"--qps={qps}",
                f"--threads={CLIENT_THREADS}",
            ],
            folder / "raw.log",
        )
        result = _result(proc, folder / "raw.log")
        ended = _wait_gone(times, keys)
    return Outcome(
        "raw",
        qps,
        keys,
        result["submitted"],
        times,
        audit.read(frozenset({user}), ended),
        ended,
        result["cpu_seconds"],
        result["peak_rss_mib"],
        {"requests_sent_by_its_own_count": result["requests_sent"]},
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_dispatcher(stack: Stack, audit: Audit, options: Options, qps: float | None) -> Outcome:
    """``qps`` None: the dispatcher's default client settings."""
    namespace = _namespace(stack, "dsp")
    folder = stack.state_dir / namespace
    settings = dispatcher_settings(
        stack,
        folder,
        namespace=namespace,
        service={"log_level": "warning"},
        client=None if qps is None else {"qps": qps, "burst": int(2 * qps)},
    )
    service = Serve(settings, folder / "dispatcher.log", REPO)
    keys = [f"dsp-{i}" for i in range(options.tasks)]
    audit.mark()
    service.start()
    try:
        pid = service.proc.pid if service.proc else 0
        with (
            watching(stack, namespace, TASK_LABEL, ("plane",)) as times,
            DispatcherClient(service.url, token=ADMIN_TOKEN, timeout=120) as api,
        ):
            startup = audit.read(DISPATCHER_USERS, time.time())
            submitted: dict[str, float] = {}

            def submit(key: str) -> None:
                submitted[key] = time.time()
                api.submit(
                    {
                        "name": key,
                        "image": IMAGE,
                        "container_resources": {"requests": REQUESTS},
                        "labels": {TASK_LABEL: key},
                        "annotations": sim_annotations(options.seconds),
                        "requirements": {"allowed_clusters": ["plane"]},
                        "idempotency_key": f"compare/{key}/{uuid.uuid4().hex}",
                    }
                )

            cpu_before = _cpu_seconds(pid)
            with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
                list(pool.map(submit, keys))
            ended = _wait_gone(times, keys)
            cpu = _cpu_seconds(pid) - cpu_before
            rss = _peak_rss_mib(pid)
            states = Counter(job["state"] for job in api.jobs())
    finally:
        service.stop()
    return Outcome(
        "dispatcher",
        qps,
        keys,
        submitted,
        times,
        audit.read(DISPATCHER_USERS, ended),
        ended,
        round(cpu, 3),
        round(rss, 1),
        {
            "startup_requests": len(startup),
            "startup_by_verb_resource": _breakdown(startup),
            "job_states": dict(states),
        },
    )


def _airflow_home(stack: Stack) -> Path:
    """A migrated SQLite metadata DB, made once per stack folder and copied for each lane."""
    home = stack.state_dir / "airflow-template"
    if not (home / "airflow.db").is_file():
        home.mkdir(exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            capture_output=True,
            text=True,
            env={**os.environ, **_airflow_env(home)},
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}")
    return home


def _airflow_env(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
    }


def run_kpo(stack: Stack, audit: Audit, options: Options) -> Outcome:
    if not provider_installed():
        raise SystemExit(NO_PROVIDER)
    template = _airflow_home(stack)
    namespace = _namespace(stack, "kpo")
    folder = stack.state_dir / namespace
    folder.mkdir()
    kubeconfig, user = _identity(stack, namespace, "kpo", folder)
    keys = [f"kpo-{i}" for i in range(options.kpo_tasks)]
    lanes = max(1, min(options.kpo_lanes, len(keys)))
    audit.mark()
    with watching(stack, namespace, TASK_LABEL, ("plane",)) as times:
        procs = []
        for lane in range(lanes):
            home = folder / f"airflow-{lane}"
            (home / "dags").mkdir(parents=True)
            shutil.copy(template / "airflow.db", home / "airflow.db")
            log = folder / f"kpo-{lane}.log"
            argv = [
                "kpo",
                f"--kubeconfig={kubeconfig}",
                f"--namespace={namespace}",
                f"--keys={','.join(keys[lane::lanes])}",
                f"--seconds={options.seconds}",
                f"--lane={lane}",
            ]
            procs.append((_child(argv, log, _airflow_env(home)), log))
        results = [_result(proc, log) for proc, log in procs]
        ended = _wait_gone(times, keys)
    submitted: dict[str, float] = {}
    for result in results:
        submitted.update(result["submitted"])
    return Outcome(
        "kpo",
        None,
        keys,
        submitted,
        times,
        audit.read(frozenset({user}), ended),
        ended,
        round(sum(r["cpu_seconds"] for r in results), 3),
        round(sum(r["peak_rss_mib"] for r in results), 1),
        {"lanes": lanes, "dag_run_states": [r["state"] for r in results]},
    )


# ----- figures --------------------------------------------------------------------------------
def _breakdown(requests: list[Request]) -> dict[str, int]:
    counted = count(requests, by=("verb", "what"))
    return {"/".join(k): v for k, v in sorted(counted.items())}


def figures(outcome: Outcome) -> dict[str, Any]:
    times, keys, submitted = outcome.times, outcome.keys, outcome.submitted
    missing = [k for k in keys if k not in times.running or k not in submitted]
    if missing:
        raise RuntimeError(f"{outcome.name}: {len(missing)} tasks never ran: {missing[:5]}")
    began = min(submitted[k] for k in keys)
    last_created = max(times.created[k] for k in keys)
    to_created = [times.created[k] - submitted[k] for k in keys]
    to_running = [times.running[k] - submitted[k] for k in keys]
    pod_minutes = sum(times.finished[k] - times.running[k] for k in keys) / 60
    pods = {times.pods[k]: k for k in keys}
    # Reads only: a contender's delete of a pod that just finished may reach the apiserver
    # before the admin watch has seen the pod finish.
    while_running = [
        r
        for r in outcome.requests
        if r.name in pods
        and r.resource == "pods"
        and r.verb in READ_VERBS
        and times.running[pods[r.name]] <= r.received < times.finished[pods[r.name]]
    ]
    total = len(outcome.requests)
    return {
        "contender": outcome.name,
        # kpo has no QPS of its own to set ("-"); the dispatcher's default is 20.
        "qps": "-" if outcome.name == "kpo" else outcome.qps or "default",
        "tasks": len(keys),
        "tasks_per_second": round(len(keys) / max(last_created - began, 1e-3), 2),
        "wall_seconds": round(outcome.ended - began, 1),
        "created_p50_s": round(statistics.median(to_created), 3),
        "created_p99_s": round(_percentile(to_created, 0.99), 3),
        "running_p50_s": round(statistics.median(to_running), 3),
        "running_p99_s": round(_percentile(to_running, 0.99), 3),
        "requests": total,
        "requests_per_task": round(total / len(keys), 2),
        "running_pod_minutes": round(pod_minutes, 2),
        "requests_per_running_pod_minute": round(total / max(pod_minutes, 1e-6), 2),
        "reads_naming_pod_while_running": len(while_running),
        "reads_naming_pod_while_running_per_pod_minute": round(
            len(while_running) / max(pod_minutes, 1e-6), 2
        ),
        "cpu_seconds": outcome.cpu_seconds,
        "cpu_ms_per_task": round(1000 * outcome.cpu_seconds / len(keys), 1),
        "peak_rss_mib": outcome.peak_rss_mib,
        "by_verb_resource": _breakdown(outcome.requests),
        **outcome.extra,
    }


COLUMNS = (
    ("tasks", "tasks"),
    ("tasks_per_second", "tasks/s"),
    ("created_p50_s", "created p50 s"),
    ("created_p99_s", "created p99 s"),
    ("running_p50_s", "running p50 s"),
    ("running_p99_s", "running p99 s"),
    ("requests_per_task", "requests/task"),
    ("requests_per_running_pod_minute", "requests/running pod-min"),
    ("reads_naming_pod_while_running_per_pod_minute", "reads of its pod while running/pod-min"),
    ("cpu_seconds", "CPU s"),
    ("cpu_ms_per_task", "CPU ms/task"),
    ("peak_rss_mib", "peak RSS MiB"),
)
RATIO_KEYS = (
    "tasks_per_second",
    "created_p50_s",
    "running_p50_s",
    "requests_per_task",
    "requests_per_running_pod_minute",
    "cpu_ms_per_task",
    "peak_rss_mib",
)


def _qps(row: dict[str, Any]) -> str:
    qps = row["qps"]
    return f"{qps:g}" if isinstance(qps, int | float) else f"{qps} ({DEFAULT_QPS:g})"


def _label(row: dict[str, Any]) -> str:
    if row["contender"] == "kpo":
        return "kpo"
    return f"{row['contender']} @ QPS {_qps(row)}"


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """dispatcher / raw at the same QPS, and dispatcher (at its defaults) / kpo."""
    by = {(r["contender"], r["qps"]): r for r in rows}
    pairs = []
    for (name, qps), row in by.items():
        if name != "dispatcher":
            continue
        same = DEFAULT_QPS if qps == "default" else qps
        if ("raw", same) in by:
            pairs.append((row, by["raw", same]))
    if ("dispatcher", "default") in by and ("kpo", "-") in by:
        pairs.append((by["dispatcher", "default"], by["kpo", "-"]))
    lines = []
    for mine, other in pairs:
        parts = []
        for key in RATIO_KEYS:
            if other[key]:
                parts.append(f"{key} {mine[key] / other[key]:.3g}")
            else:
                parts.append(f"{key} {mine[key]:g}/0")
        lines.append(f"{_label(mine)} / {_label(other)}: " + ", ".join(parts))
    return lines


def table(rows: list[dict[str, Any]]) -> str:
    head = ["contender", "QPS", *(title for _, title in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        qps = "-" if row["contender"] == "kpo" else _qps(row)
        cells = [row["contender"], qps] + [f"{row[k]:g}" for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(stack: Stack, options: Options, out: Any = sys.stdout) -> dict[str, Any]:
    """Every contender in turn on ``stack`` (up, with an audit log); the report."""
    audit = Audit(stack)
    rows: list[dict[str, Any]] = []

    def record(outcome: Outcome) -> None:
        row = figures(outcome)
        row["load_after"] = _load()
        rows.append(row)
        print(f"{outcome.name}: {json.dumps(row)}", file=out, flush=True)

    print(f"start: load average {_load()}, {options}", file=out, flush=True)
    for qps in (None, options.raised_qps):
        if "raw" in options.contenders:
            record(run_raw(stack, audit, options, qps or DEFAULT_QPS))
        if "dispatcher" in options.contenders:
            record(run_dispatcher(stack, audit, options, qps))
    if "kpo" in options.contenders:
        record(run_kpo(stack, audit, options))
    report: dict[str, Any] = {"rows": rows, "ratios": ratios(rows), "end_load": _load()}
    print("\n" + table(rows) + "\n", file=out)
    for line in report["ratios"]:
        print(line, file=out)
    print(f"end: load average {report['end_load']}", file=out, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Options()
    parser.add_argument("--tasks", type=int, default=defaults.tasks)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--raised-qps", type=float, default=defaults.raised_qps)
    parser.add_argument("--kpo-tasks", type=int, default=defaults.kpo_tasks)
    parser.add_argument("--kpo-lanes", type=int, default=defaults.kpo_lanes)
    parser.add_argument("--contenders", default=",".join(defaults.contenders))
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    scratch_stack("/tmp/kd-stack-compare", 32600)  # noqa: S108 - a scratch stack
    chosen = tuple(c for c in args.contenders.split(",") if c)
    unknown = sorted(set(chosen) - set(defaults.contenders))
    if unknown:
        parser.error(f"unknown contenders {unknown}: choose from {list(defaults.contenders)}")
    if min(args.tasks, args.kpo_tasks, args.kpo_lanes) < 1 or args.seconds <= 0:
        parser.error("--tasks, --kpo-tasks and --kpo-lanes must be at least 1, --seconds > 0")
    try:  # the dispatcher's own settings judge the raised QPS (and its burst)
        ClientSettings(qps=args.raised_qps, burst=int(2 * args.raised_qps))
    except ValidationError as exc:
        parser.error(f"--raised-qps {args.raised_qps:g}: {exc.errors()[0]['msg']}")
    if "kpo" in chosen and not provider_installed():
        parser.error(NO_PROVIDER)
    options = Options(
        tasks=args.tasks,
        seconds=args.seconds,
        raised_qps=args.raised_qps,
        kpo_tasks=args.kpo_tasks,
        kpo_lanes=args.kpo_lanes,
        contenders=chosen,
    )
    stack = Stack(clusters=default_clusters(plane_nodes=max(3, args.tasks // 100 + 2)), audit=True)
    was_up = stack.is_up()
    stack.up()
    try:
        report = run(stack, options)
    finally:
        if not was_up and os.environ.get("KD_STACK_KEEP") != "1":
            stack.down()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
