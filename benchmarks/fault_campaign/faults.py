"""The campaign's faults: a schedule drawn from the seed, and the injectors that play it.

``plan_faults(seed, seconds)`` draws two independent tracks from ``random.Random``, so faults
of the two overlap as they would in production:

- processes: kill -9 the leader (or, one time in four, the follower) and start it again
  after a pause;
- infrastructure: stop a GPU cluster's apiserver (its scheduler and KWOK are restarted with
  it) and start it again; stop and start Vault; rotate gpu-a100's credential in Vault;
  delete a running pod behind the dispatcher's back; cordon a node and uncordon it; with
  ``proxy=True``, make one cluster slow or erroring through a fault proxy.

``Injector`` plays a schedule against a running campaign, writes each fault's start and end
(and the faults it had to skip, with why) to the faults history, and ``restore()`` undoes
whatever is still in effect: every apiserver and Vault running, every node schedulable,
every replica started.

I/O: kills and starts processes, stops and starts parts of the stack, admin API calls.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from kubernetes import client

from benchmarks.fault_campaign.history import PodWatch
from benchmarks.fault_campaign.records import JsonLines
from tests.stack.fixtures import Faults
from tests.stack.launcher import Stack
from tests.support import ServiceProcess

__all__ = ["FAULT_KINDS", "Injector", "PlannedFault", "leader_of", "plan_faults"]

GPU_CLUSTERS = ("gpu-a100", "gpu-h100")
FAULT_KINDS = (
    "kill_leader",
    "kill_follower",
    "apiserver_down",
    "vault_down",
    "rotate_credential",
    "delete_pod",
    "cordon_node",
    "proxy_slow",
    "proxy_errors",
)
#: Infrastructure kind -> weight, and (min, max) seconds it lasts before ``scale``.
_INFRA: Mapping[str, tuple[float, tuple[float, float]]] = {
    "apiserver_down": (3.0, (10.0, 45.0)),
    "vault_down": (1.0, (5.0, 20.0)),
    "rotate_credential": (1.0, (0.0, 0.0)),
    "delete_pod": (2.0, (0.0, 0.0)),
    "cordon_node": (1.5, (10.0, 30.0)),
}
_PROXY: Mapping[str, tuple[float, tuple[float, float]]] = {
    "proxy_slow": (1.0, (10.0, 30.0)),
    "proxy_errors": (1.0, (10.0, 30.0)),
}


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule: when (seconds after the start), what, for how long."""

    track: str
    at: float
    kind: str
    pause: float
    #: Where it strikes: a cluster, or a draw in [0, 1) that picks a node or pod when it runs.
    cluster: str | None
    pick: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_faults(
    seed: int, seconds: float, *, scale: float = 1.0, proxy: bool = False
) -> list[PlannedFault]:
    """The fault schedule of ``seed`` for a campaign of ``seconds``; ``scale`` shortens
    pauses and gaps (a CI-sized campaign uses about 0.5)."""
    plans: list[PlannedFault] = []
    rng = random.Random(f"{seed}/faults/processes")
    at = rng.uniform(10, 20) * scale
    while at < seconds:
        kind = "kill_follower" if rng.random() < 0.25 else "kill_leader"
        pause = rng.uniform(2.0, 15.0) * scale
        plans.append(PlannedFault("processes", at, kind, pause, None, rng.random()))
        at += pause + rng.uniform(15.0, 40.0) * scale
    rng = random.Random(f"{seed}/faults/infrastructure")
    kinds = {**_INFRA, **(_PROXY if proxy else {})}
    at = rng.uniform(5, 10) * scale
    while at < seconds:
        kind = rng.choices(list(kinds), weights=[w for w, _ in kinds.values()])[0]
        low, high = kinds[kind][1]
        pause = rng.uniform(low, high) * scale
        cluster = rng.choice(GPU_CLUSTERS) if kind != "delete_pod" else None
        if kind == "rotate_credential":
            cluster = "gpu-a100"  # the cluster whose kubeconfig Vault's KV holds
        plans.append(PlannedFault("infrastructure", at, kind, pause, cluster, rng.random()))
        at += pause + rng.uniform(5.0, 20.0) * scale
    return sorted(plans, key=lambda p: p.at)


def leader_of(replicas: Sequence[ServiceProcess]) -> int | None:
    """The index of the replica that answers job operations now (the leader), if any."""
    for index, replica in enumerate(replicas):
        if replica.proc is None or replica.proc.poll() is not None:
            continue
        try:
            answer = httpx.get(
                f"{replica.url}/v1/jobs", params={"idempotency_key": "leader-probe"}, timeout=3
            )
        except httpx.HTTPError:
            continue
        if answer.status_code == 200:
            return index
    return None


class Injector:
    """Plays fault schedules against the stack and the replicas; always restores."""

    def __init__(
        self,
        stack: Stack,
        replicas: Sequence[ServiceProcess],
        watches: Mapping[str, PodWatch],
        out: JsonLines,
        namespace: str,
    ) -> None:
        self._stack = stack
        self._replicas = list(replicas)
        self._watches = watches
        self._out = out
        self._namespace = namespace
        self._stack_faults = Faults(stack)
        self._cordoned: set[tuple[str, str]] = set()
        self._ids = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ----- running a schedule -----------------------------------------------------------
    def start(self, plans: Sequence[PlannedFault], began: float) -> None:
        for track in sorted({p.track for p in plans}):
            mine = [p for p in plans if p.track == track]
            thread = threading.Thread(
                target=self._play, args=(mine, began), name=f"faults-{track}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """End the schedule: the fault in effect on each track ends now, then ``restore``."""
        self._stop.set()
        for thread in self._threads:
            thread.join(240)
        self.restore()

    def _play(self, plans: Sequence[PlannedFault], began: float) -> None:
        for plan in plans:
            if self._stop.wait(max(0.0, began + plan.at - time.monotonic())):
                return
            try:
                self._inject(plan)
            except Exception as exc:  # a fault that fails is written down, not fatal
                self._out.write(
                    {"type": "fault", "phase": "error", "kind": plan.kind, "error": repr(exc)[:300]}
                )

    def _inject(self, plan: PlannedFault) -> None:
        kind = plan.kind
        if kind in ("kill_leader", "kill_follower"):
            self._kill(plan)
        elif kind == "apiserver_down":
            self._during(
                plan, {"cluster": plan.cluster}, self._stop_apiserver, self._start_apiserver
            )
        elif kind == "vault_down":
            self._during(
                plan,
                {},
                lambda _: self._stack_faults.stop_vault(),
                lambda _: self._stack_faults.start_vault(),
            )
        elif kind == "rotate_credential":
            self._during(
                plan,
                {"cluster": plan.cluster},
                lambda t: self._stack.rotate_restricted_credential(t["cluster"]),
                None,
            )
        elif kind == "delete_pod":
            self._delete_pod(plan)
        elif kind == "cordon_node":
            self._cordon(plan)
        else:
            self._skip(plan, "the fault proxy (tests/faultproxy.py) is not wired in yet")

    # ----- one fault --------------------------------------------------------------------
    def _begin(self, plan: PlannedFault, target: Mapping[str, Any]) -> int:
        with self._lock:
            self._ids += 1
            fault_id = self._ids
        self._out.write(
            {
                "type": "fault",
                "phase": "start",
                "fault_id": fault_id,
                "kind": plan.kind,
                "target": dict(target),
                "plan": plan.as_dict(),
            }
        )
        return fault_id

    def _end(self, plan: PlannedFault, fault_id: int, **extra: Any) -> None:
        self._out.write(
            {"type": "fault", "phase": "end", "fault_id": fault_id, "kind": plan.kind, **extra}
        )

    def _skip(self, plan: PlannedFault, reason: str) -> None:
        self._out.write(
            {
                "type": "fault",
                "phase": "skipped",
                "kind": plan.kind,
                "reason": reason,
                "plan": plan.as_dict(),
            }
        )

    def _during(
        self,
        plan: PlannedFault,
        target: Mapping[str, Any],
        begin: Any,
        end: Any,
    ) -> None:
        """``begin(target)``, wait the plan's pause (cut short by ``stop``), ``end(target)``."""
        fault_id = self._begin(plan, target)
        error = None
        try:
            begin(target)
            if end is not None:
                self._stop.wait(plan.pause)
        finally:
            try:
                if end is not None:
                    end(target)
            except Exception as exc:
                error = repr(exc)[:300]
                raise
            finally:
                self._end(plan, fault_id, **({"error": error} if error else {}))

    def _stop_apiserver(self, target: Mapping[str, Any]) -> None:
        self._stack_faults.stop_apiserver(target["cluster"])

    def _start_apiserver(self, target: Mapping[str, Any]) -> None:
        self._stack_faults.start_apiserver(target["cluster"])

    def _kill(self, plan: PlannedFault) -> None:
        deadline = time.monotonic() + 30
        leader = leader_of(self._replicas)
        while leader is None and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(1.0)
            leader = leader_of(self._replicas)
        if leader is None:
            self._skip(plan, "no replica leads")
            return
        index = leader
        if plan.kind == "kill_follower":
            others = [i for i, r in enumerate(self._replicas) if i != leader and _alive(r)]
            if not others:
                self._skip(plan, "no follower is running")
                return
            index = others[0]
        replica = self._replicas[index]
        self._during(
            plan,
            {
                "replica": index,
                "url": replica.url,
                "pid": replica.proc.pid if replica.proc else None,
            },
            lambda _: replica.kill9(),
            lambda _: replica.start(timeout=120),
        )

    def _delete_pod(self, plan: PlannedFault) -> None:
        running = sorted(
            (
                (cluster, record)
                for cluster, watch in self._watches.items()
                for record in watch.alive()
                if record.get("phase") == "Running" and record.get("deletion_timestamp") is None
            ),
            key=lambda item: (item[0], str(item[1]["pod"])),
        )
        if not running:
            self._skip(plan, "no running pod")
            return
        cluster, record = running[int(plan.pick * len(running))]
        target = {key: record[key] for key in ("pod", "uid", "job_id", "attempt")}

        def delete(_: Mapping[str, Any]) -> None:
            with self._stack.kube(cluster) as api:
                client.CoreV1Api(api).delete_namespaced_pod(
                    record["pod"], self._namespace, grace_period_seconds=0
                )

        self._during(plan, {"cluster": cluster, **target}, delete, None)

    def _cordon(self, plan: PlannedFault) -> None:
        cluster = str(plan.cluster)
        nodes = self._stack.env().clusters[cluster].nodes
        node = sorted(nodes)[int(plan.pick * len(nodes))]
        self._during(
            plan,
            {"cluster": cluster, "node": node},
            lambda _: self._set_unschedulable(cluster, node, True),
            lambda _: self._set_unschedulable(cluster, node, False),
        )

    def _set_unschedulable(self, cluster: str, node: str, unschedulable: bool) -> None:
        with self._stack.kube(cluster) as api:
            client.CoreV1Api(api).patch_node(node, {"spec": {"unschedulable": unschedulable}})
        if unschedulable:
            self._cordoned.add((cluster, node))
        else:
            self._cordoned.discard((cluster, node))

    # ----- undo -------------------------------------------------------------------------
    def restore(self) -> None:
        """Whatever is still in effect ends: apiservers, Vault, nodes, replicas."""
        self._stack_faults.restore()
        for cluster, node in sorted(self._cordoned):
            self._set_unschedulable(cluster, node, False)
        for replica in self._replicas:
            if not _alive(replica):
                replica.start(timeout=120)


def _alive(replica: ServiceProcess) -> bool:
    return replica.proc is not None and replica.proc.poll() is None
