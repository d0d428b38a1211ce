"""The campaign's faults: a schedule drawn from the seed, and the injectors that play it.

``plan_faults(seed, seconds)`` draws three independent tracks from ``random.Random``, so
faults of different tracks overlap as they would in production:

- processes: kill -9 the leader (or the follower) and start it again after a pause;
- control plane: stop a GPU cluster's apiserver (its scheduler and KWOK are restarted with
  it) and start it again; stop and start Vault;
- cluster: rotate gpu-a100's credential in Vault; delete a running pod behind the
  dispatcher's back; cordon a node and uncordon it; with ``proxy=True``, make gpu-h100
  slow (``proxy_slow``), throttled (``proxy_throttle``: 429 with Retry-After) or failing
  (``proxy_errors``: 503, dropped connections or hung requests, open watches cut) through
  ``tests.faultproxy.FaultProxy``, which the replicas reach gpu-h100 through (the
  campaign's admin watches do not).

A cluster fault aimed at a cluster whose apiserver is stopped goes to the other GPU
cluster, or is skipped (as is a rotation while Vault is down); skips are written down.

``Injector`` plays a schedule against a running campaign, writes each fault's start and end
(and the faults it had to skip, with why) to the faults history, and ``restore()`` undoes
whatever is still in effect: every apiserver and Vault running, every node schedulable,
every replica started, the proxy passing.

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
from tests.faultproxy import Answer, Delay, Drop, FaultProxy, Hang, Mode, Pass
from tests.stack.fixtures import Faults
from tests.stack.launcher import Stack
from tests.support import ADMIN_HEADERS, ServiceProcess

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
    "proxy_throttle",
    "proxy_errors",
)
#: The cluster the replicas reach through the fault proxy (its server is in their settings).
PROXIED_CLUSTER = "gpu-h100"
#: Track -> (kinds drawn as a shuffled bag: each round plays every kind listed once, in a
#: seeded order; first gap, gaps between faults). Kind -> (min, max) seconds it lasts.
_TRACKS: Mapping[str, tuple[tuple[str, ...], tuple[float, float], tuple[float, float]]] = {
    "processes": (("kill_leader", "kill_leader", "kill_follower"), (10, 20), (15, 40)),
    "control-plane": (("apiserver_down", "apiserver_down", "vault_down"), (5, 15), (10, 30)),
    "cluster": (
        ("delete_pod", "delete_pod", "cordon_node", "rotate_credential"),
        (5, 10),
        (5, 20),
    ),
}
_PROXY_KINDS = ("proxy_slow", "proxy_throttle", "proxy_errors")
_LASTS: Mapping[str, tuple[float, float]] = {
    "kill_leader": (2.0, 15.0),
    "kill_follower": (2.0, 15.0),
    "apiserver_down": (10.0, 45.0),
    "vault_down": (5.0, 20.0),
    "rotate_credential": (0.0, 0.0),
    "delete_pod": (0.0, 0.0),
    "cordon_node": (10.0, 30.0),
    "proxy_slow": (10.0, 30.0),
    "proxy_throttle": (10.0, 30.0),
    "proxy_errors": (10.0, 30.0),
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
    """The fault schedule of ``seed`` for a campaign of ``seconds``: three tracks that run
    at once (processes, control plane, cluster), each drawing its kinds from a shuffled bag
    so that even a short campaign plays every kind; ``scale`` shortens pauses and gaps (a
    CI-sized campaign uses about 0.5). A track's faults run one after another: one that
    takes longer than planned delays the rest of its track."""
    plans: list[PlannedFault] = []
    for track, (kinds, first, gaps) in _TRACKS.items():
        rng = random.Random(f"{seed}/faults/{track}")
        bag: list[str] = []
        at = rng.uniform(*first) * scale
        while at < seconds:
            if not bag:
                bag = [*kinds, *(_PROXY_KINDS if proxy and track == "cluster" else ())]
                rng.shuffle(bag)
            kind = bag.pop()
            pause = rng.uniform(*_LASTS[kind]) * scale
            cluster: str | None = rng.choice(GPU_CLUSTERS)
            if kind in ("kill_leader", "kill_follower", "vault_down", "delete_pod"):
                cluster = None
            elif kind == "rotate_credential":
                cluster = "gpu-a100"  # the cluster whose kubeconfig Vault's KV holds
            elif kind in _PROXY_KINDS:
                cluster = PROXIED_CLUSTER
            plans.append(PlannedFault(track, at, kind, pause, cluster, rng.random()))
            at += pause + rng.uniform(*gaps) * scale
    return sorted(plans, key=lambda p: p.at)


def leader_of(replicas: Sequence[ServiceProcess]) -> int | None:
    """The index of the replica that answers job operations now (the leader), if any."""
    for index, replica in enumerate(replicas):
        if replica.proc is None or replica.proc.poll() is not None:
            continue
        try:
            answer = httpx.get(
                f"{replica.url}/v1/jobs",
                params={"idempotency_key": "leader-probe"},
                headers=ADMIN_HEADERS,
                timeout=3,
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
        *,
        proxy: FaultProxy | None = None,
    ) -> None:
        self._stack = stack
        self._replicas = list(replicas)
        self._watches = watches
        self._out = out
        self._namespace = namespace
        self._proxy = proxy
        self._stack_faults = Faults(stack)
        self._cordoned: set[tuple[str, str]] = set()
        #: Clusters whose apiserver is stopped, and "vault" while Vault is.
        self._down: set[str] = set()
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
            self._during(plan, {}, self._stop_vault, self._start_vault)
        elif kind == "rotate_credential":
            if {"vault", str(plan.cluster)} & self._down:
                self._skip(plan, f"{plan.cluster} or Vault is stopped")
                return
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
        elif self._proxy is None:
            self._skip(plan, "no fault proxy in front of the cluster")
        else:
            self._proxy_fault(plan, self._proxy)

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
        self._down.add(target["cluster"])
        self._stack_faults.stop_apiserver(target["cluster"])

    def _start_apiserver(self, target: Mapping[str, Any]) -> None:
        self._stack_faults.start_apiserver(target["cluster"])
        self._down.discard(target["cluster"])

    def _stop_vault(self, _: Mapping[str, Any]) -> None:
        self._down.add("vault")
        self._stack_faults.stop_vault()

    def _start_vault(self, _: Mapping[str, Any]) -> None:
        self._stack_faults.start_vault()
        self._down.discard("vault")

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
                if cluster not in self._down
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
        up = [c for c in (str(plan.cluster), *GPU_CLUSTERS) if c not in self._down]
        if not up:
            self._skip(plan, "every GPU cluster is stopped")
            return
        cluster = up[0]
        nodes = self._stack.env().clusters[cluster].nodes
        node = sorted(nodes)[int(plan.pick * len(nodes))]
        self._during(
            plan,
            {"cluster": cluster, "node": node},
            lambda _: self._set_unschedulable(cluster, node, True),
            lambda _: self._set_unschedulable(cluster, node, False),
        )

    def _proxy_fault(self, plan: PlannedFault, proxy: FaultProxy) -> None:
        mode: Mode
        if plan.kind == "proxy_slow":
            mode = Delay(round(0.5 + plan.pick * 2.5, 1))
        elif plan.kind == "proxy_throttle":
            mode = Answer(429, retry_after=2, message="Too many requests, please try again later.")
        elif plan.pick < 0.4:
            mode = Answer(503)
        else:
            mode = Drop() if plan.pick < 0.7 else Hang()

        def begin(_: Mapping[str, Any]) -> None:
            proxy.set_mode(mode)
            if plan.kind == "proxy_errors":
                proxy.cut_streams()  # open watches break as in a network failure

        self._during(
            plan,
            {"cluster": plan.cluster, "mode": repr(mode)},
            begin,
            lambda _: proxy.set_mode(Pass()),
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
        self._down.clear()
        if self._proxy is not None:
            self._proxy.set_mode(Pass())
        for cluster, node in sorted(self._cordoned):
            self._set_unschedulable(cluster, node, False)
        for replica in self._replicas:
            if not _alive(replica):
                replica.start(timeout=120)


def _alive(replica: ServiceProcess) -> bool:
    return replica.proc is not None and replica.proc.poll() is None
