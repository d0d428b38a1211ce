"""Fair share end to end (issue 16 items 1 and 2): quotas and the fair order, on the stack.

``dispatcher serve`` runs with two tenants (static tokens) and a ``fair_share`` section.
The judge is an admin watch on the GPU cluster's pods, started before anything is
submitted: the order in which the API server saw the pods created, and what was running
at each moment, never the dispatcher's own account.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch

from dispatcher.core.podspec import JOB_ID_LABEL
from tests.stack import Stack
from tests.stack.dispatcher_config import AUDIENCE
from tests.support import ADMIN_TOKEN, ServiceProcess, succeed, task, wait_until

HOSTNAME = "kubernetes.io/hostname"
TEAM_A_TOKEN = "kd-test-fair-team-a"
TEAM_B_TOKEN = "kd-test-fair-team-b"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PodHistory:
    """Every change of the pods of one namespace of one cluster, as an admin watch saw it."""

    def __init__(self, stack: Stack, cluster: str, namespace: str) -> None:
        self.events: list[tuple[str, str, str]] = []  # (type, job id, phase)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(stack, cluster, namespace), daemon=True
        )
        self._thread.start()
        assert self._ready.wait(30), "the admin watch did not start"

    def _run(self, stack: Stack, cluster: str, namespace: str) -> None:
        with stack.kube(cluster) as api:
            core = client.CoreV1Api(api)
            version = core.list_namespaced_pod(namespace).metadata.resource_version
            self._ready.set()
            while not self._stop.is_set():
                stream = watch.Watch().stream(
                    core.list_namespaced_pod,
                    namespace,
                    resource_version=version,
                    timeout_seconds=5,
                )
                for event in stream:
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    job = (pod.metadata.labels or {}).get(JOB_ID_LABEL, "")
                    with self._changed:
                        self.events.append((event["type"], job, pod.status.phase or ""))
                        self._changed.notify_all()

    def created(self) -> list[str]:
        """Job ids in the order their pods were created."""
        with self._changed:
            return [job for kind, job, _ in self.events if kind == "ADDED"]

    def wait_created(self, count: int, timeout: float = 90) -> list[str]:
        with self._changed:
            self._changed.wait_for(
                lambda: sum(1 for kind, *_ in self.events if kind == "ADDED") >= count, timeout
            )
        return self.created()

    def index(self, job: str, kind: str = "ADDED", phase: str | None = None) -> int:
        with self._changed:
            for i, (seen, who, at) in enumerate(self.events):
                if who == job and seen == kind and (phase is None or at == phase):
                    return i
        raise AssertionError(f"no {kind} {phase or ''} event for {job}: {self.events}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def history(stack: Stack, namespace: str) -> Iterator[PodHistory]:
    seen = PodHistory(stack, "gpu-a100", namespace)
    yield seen
    seen.stop()


def fair_service(service_factory: Any, fair_share: dict[str, Any]) -> ServiceProcess:
    service: ServiceProcess = service_factory(
        tenants={"team-a": {"priority": {"min": 0, "max": 10}}, "team-b": {}},
        fair_share=fair_share,
        auth={
            "static_tokens": [
                {"sha256": _digest(ADMIN_TOKEN), "tenant": "admin"},
                {"sha256": _digest(TEAM_A_TOKEN), "tenant": "team-a"},
                {"sha256": _digest(TEAM_B_TOKEN), "tenant": "team-b"},
            ],
            "token_review": {"audience": AUDIENCE},
        },
        cycle_interval_seconds=0.5,
    )
    return service


def a100(name: str, *, seconds: int, node: str | None = None, priority: int = 0) -> dict[str, Any]:
    spec = task(name, gpus=8, model="a100", annotations=succeed(f"{seconds}s"))
    spec["requirements"]["priority"] = priority
    if node is not None:
        spec["node_selector"] = {HOSTNAME: node}
    return spec


def test_a_tenant_over_quota_waits_while_another_within_quota_runs(
    service_factory: Any, history: PodHistory
) -> None:
    service = fair_service(
        service_factory,
        {"tenants": {"team-a": {"quota": {"gpus": {"a100": 8}}}, "team-b": {}}},
    )
    with (
        service.client(token=TEAM_A_TOKEN) as team_a,
        service.client(token=TEAM_B_TOKEN) as team_b,
    ):
        first, _ = team_a.submit(a100("a-first", seconds=6))
        assert history.wait_created(1) == [first["id"]]
        second, _ = team_a.submit(a100("a-second", seconds=1))
        # 24 A100s are free, but team-a holds its whole quota: the job says so.
        waiting = wait_until(
            lambda: (j := team_a.get(second["id"]))["reason"].startswith("fits on") and j,
            timeout=30,
        )
        assert waiting["state"] == "queued"
        assert "waits for quota: tenant 'team-a' would hold 16 a100 GPUs" in waiting["reason"]
        assert "fair_share.tenants.team-a.quota" in waiting["reason"]
        # The API's queue view and `dispatcher queue` say the same.
        assert waiting["queue"]["tenant"] == "team-a"
        assert "waits for quota" in waiting["queue"]["waiting_for"]
        shown = subprocess.run(
            [sys.executable, "-m", "dispatcher.cli", "queue"],
            capture_output=True,
            text=True,
            env={
                "DISPATCHER_URL": service.url,
                "DISPATCHER_TOKEN": TEAM_A_TOKEN,
                "COLUMNS": "250",
                "PATH": "/usr/bin:/bin",
            },
            timeout=120,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert second["id"] in shown.stdout
        assert "waits for quota" in shown.stdout
        other, _ = team_b.submit(a100("b-within", seconds=1))
        # team-b, not over any quota, is not held back by team-a's waiting job.
        assert history.wait_created(2) == [first["id"], other["id"]]
        # team-a's second job runs only once its first has ended.
        assert history.wait_created(3)[2] == second["id"]
        assert history.index(first["id"], "MODIFIED", "Succeeded") < history.index(second["id"])


def test_waiting_jobs_run_by_priority_then_tenant_share_then_age(
    stack: Stack, service_factory: Any, history: PodHistory
) -> None:
    with stack.kube("gpu-a100") as api:
        nodes = sorted(n.metadata.name for n in client.CoreV1Api(api).list_node().items)
    # Reservations off: this is about the order alone (they are the simulation's subject).
    service = fair_service(
        service_factory, {"tenants": {"team-a": {}, "team-b": {}}, "reservations": False}
    )
    with (
        service.client(token=TEAM_A_TOKEN) as team_a,
        service.client(token=TEAM_B_TOKEN) as team_b,
        service.client() as admin,
    ):
        # team-a holds 8 of the 32 A100s throughout, on another node; team-b holds none.
        hold = task("a-hold", gpus=8, model="a100", node_selector={HOSTNAME: nodes[1]})
        held, _ = team_a.submit(hold)
        # One node, one 8-GPU job at a time: pods are created in the dispatcher's order.
        blocker, _ = admin.submit(a100("blocker", seconds=4, node=nodes[0]))
        assert history.wait_created(2) == [held["id"], blocker["id"]]
        a1, _ = team_a.submit(a100("a1", seconds=2, node=nodes[0]))
        a2, _ = team_a.submit(a100("a2", seconds=2, node=nodes[0]))
        b1, _ = team_b.submit(a100("b1", seconds=2, node=nodes[0]))
        urgent, _ = team_a.submit(a100("urgent", seconds=2, node=nodes[0], priority=5))
        for job in (a1, a2, b1, urgent):
            assert admin.get(job["id"])["state"] == "queued"
        order = history.wait_created(6, timeout=120)
        # Priority first; then team-b, whose share (0) is below team-a's (8/32); then
        # team-a's by age. Priority then age alone would give urgent, a1, a2, b1.
        names = {j["id"]: n for n, j in {"a1": a1, "a2": a2, "b1": b1, "urgent": urgent}.items()}
        assert [names[j] for j in order[2:]] == ["urgent", "b1", "a1", "a2"]
