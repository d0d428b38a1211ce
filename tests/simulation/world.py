"""The simulated world a dispatcher lives in: clusters, a clock, a Lease, the record store.

Everything the simulation's invariants judge is recorded here, from the world's side: every
pod (who created it, under which lease, whether its record named it first), every record
write, every refused request. The dispatcher's own account of itself is never consulted.

- ``FakeClock``: the one clock of the world and of every dispatcher in it; time moves only
  in ``World.advance``.
- ``FakeCluster``: pods in an API server (a name is unique per namespace: a second create
  is a 409), a scheduler and a kubelet that run them in fake time as the test stack's KWOK
  stages do (``sim.dispatcher.dev/succeed-after`` ...), reachability, and faults armed for
  the next matching request.
- ``World``: the clusters, the Lease (holder, term, renewals) and the record store
  (``store.RecordingStore``), and what happened: pods created, creates refused, violations
  found at the moment they happened, a trace.
- ``ManualRunner``: the dispatcher's runner; submitted functions wait until the test runs
  them, one at a time, in the order it chooses.

What a dispatcher process sees of all this is in ``cache`` (its ``FakeCache`` and
connections).

Pure in-memory: no I/O, no threads, no real time.
"""

from __future__ import annotations

import copy
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from dispatcher.core import (
    ATTEMPT_LABEL,
    JOB_ID_LABEL,
    ClusterInfo,
    ClusterRole,
    CostTable,
    NodeInfo,
    PodDefaults,
    Toleration,
    pod_requests,
    quantity,
    usage_by_node,
)
from dispatcher.core.apierrors import api_error
from dispatcher.core.scheduling import (
    fits,
    matches_node_affinity,
    matches_node_selector,
    untolerated_taints,
)
from dispatcher.core.spec import Affinity
from dispatcher.dispatching.records import Fence
from dispatcher.errors import ClusterUnavailable
from tests.simulation.store import RecordingStore, record_attempts, record_state

if TYPE_CHECKING:
    from tests.simulation.cache import FakeCache

__all__ = [
    "A100",
    "CREATE_ERROR",
    "EXIT_CODE",
    "FAIL_AFTER",
    "H100",
    "NEVER_START",
    "START_DELAY",
    "SUCCEED_AFTER",
    "TERMINATION_MESSAGE",
    "ClusterSpec",
    "Created",
    "FakeClock",
    "FakeCluster",
    "Fault",
    "Lease",
    "ManualRunner",
    "ProcessExited",
    "SimPod",
    "World",
    "choose_node",
    "default_topology",
]

A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
NAMESPACE = "dispatch"

# The test stack's KWOK stages (tests/stack/README.md), and one the stack has no need of.
_SIM = "sim.dispatcher.dev/"
SUCCEED_AFTER = _SIM + "succeed-after"
FAIL_AFTER = _SIM + "fail-after"
EXIT_CODE = _SIM + "exit-code"
REASON = _SIM + "reason"
TERMINATION_MESSAGE = _SIM + "termination-message"
NEVER_START = _SIM + "never-start"
START_DELAY = _SIM + "start-delay"
#: The API server refuses every create of this pod with this status ("422", "403"): a
#: manifest the cluster will never accept (a webhook, a quota, a malformed field).
CREATE_ERROR = _SIM + "create-error"

#: Scheduler latency: a new pod is bound (or found unschedulable) this long after creation.
BIND_LATENCY = 0.1
DEFAULT_START_DELAY = 0.5
#: A cache whose watch lost an event lists again after this long (the informer's relist).
RELIST_DELAY = 2.0
#: Assumed pods not seen bound stop counting after this long (``CacheOptions``).
ASSUME_TTL = 60.0


# ----- time ---------------------------------------------------------------------------------
class FakeClock:
    """Seconds since the epoch, moved only by the world."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start

    def __call__(self) -> float:
        return self._now

    def set(self, moment: float) -> None:
        if moment < self._now:
            raise ValueError(f"time runs forward: {moment} < {self._now}")
        self._now = moment


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def parse_duration(text: str) -> float:
    """``"3s"``, ``"500ms"``, ``"2m"``, as KWOK's stages read them."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


# ----- topology -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterSpec:
    """One cluster of the world: what configuration says and its nodes (API JSON shape)."""

    info: ClusterInfo
    nodes: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        return self.info.name


def _node(
    name: str, *, cpu: str, memory: str, gpus: int = 0, model: str | None = None
) -> dict[str, Any]:
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
    labels = {"kubernetes.io/hostname": name, "type": "kwok"}
    spec: dict[str, Any] = {}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
        labels["nvidia.com/gpu.product"] = model or "unknown"
        spec["taints"] = [dict(GPU_TAINT)]
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def default_topology(
    plane_nodes: int = 3, a100_nodes: int = 4, h100_nodes: int = 2
) -> tuple[ClusterSpec, ...]:
    """The test stack's clusters (tests/stack/README.md) and the dispatcher settings it
    writes for them (tests/stack/dispatcher_config.py)."""
    gpu_defaults = PodDefaults.model_validate(
        {"namespace": NAMESPACE, "gpu_tolerations": [GPU_TOLERATION]}
    )
    return (
        ClusterSpec(
            ClusterInfo(
                name="plane",
                role=ClusterRole.IN_PLANE,
                labels={"topology.kubernetes.io/region": "us-east-1"},
                cost=CostTable(cpu_hour=0.031, memory_gib_hour=0.004),
                pod_defaults=PodDefaults.model_validate({"namespace": NAMESPACE}),
            ),
            tuple(_node(f"plane-{i}", cpu="16", memory="64Gi") for i in range(plane_nodes)),
        ),
        ClusterSpec(
            ClusterInfo(
                name="gpu-a100",
                labels={"topology.kubernetes.io/region": "us-east-1"},
                cost=CostTable(cpu_hour=0.031, memory_gib_hour=0.004, gpu_hour={A100: 2.75}),
                pod_defaults=gpu_defaults,
            ),
            tuple(
                _node(f"a100-{i}", cpu="96", memory="1000Gi", gpus=8, model=A100)
                for i in range(a100_nodes)
            ),
        ),
        ClusterSpec(
            ClusterInfo(
                name="gpu-h100",
                labels={"topology.kubernetes.io/region": "eu-west-1"},
                cost=CostTable(cpu_hour=0.045, memory_gib_hour=0.006, gpu_hour={H100: 4.9}),
                pod_defaults=gpu_defaults,
            ),
            tuple(
                _node(f"h100-{i}", cpu="96", memory="1000Gi", gpus=8, model=H100)
                for i in range(h100_nodes)
            ),
        ),
    )


# ----- scheduling (the world's scheduler and the caches' assumptions agree) -------------------
_SCORED = (quantity.CPU, quantity.MEMORY)


def requests_with_slot(pod: Mapping[str, Any]) -> dict[str, int]:
    requests = pod_requests(pod)
    requests[quantity.PODS] = requests.get(quantity.PODS, 0) + 1
    return requests


def choose_node(nodes: Iterable[NodeInfo], pod: Mapping[str, Any]) -> str | None:
    """Where kube-scheduler would bind ``pod`` now (filters, then LeastAllocated)."""
    spec = pod.get("spec") or {}
    tolerations = [Toleration.model_validate(t) for t in spec.get("tolerations") or ()]
    affinity = spec.get("affinity")
    terms = Affinity.model_validate(affinity).required_terms if affinity else None
    selector = spec.get("nodeSelector") or {}
    requests = requests_with_slot(pod)
    wanted = tuple(requests.items())
    best: tuple[float, str] | None = None
    for node in nodes:
        if not node.ready or node.unschedulable:
            continue
        if untolerated_taints(node.taints, tolerations):
            continue
        if not matches_node_selector(selector, node.labels):
            continue
        if not matches_node_affinity(terms, node.labels, node.name):
            continue
        free = node.free
        if not fits(wanted, free):
            continue
        shares = [
            (free.get(r, 0) - requests.get(r, 0)) / node.allocatable[r]
            for r in _SCORED
            if node.allocatable.get(r)
        ]
        score = sum(shares) / len(shares) if shares else 0.0
        if best is None or (-score, node.name) < (-best[0], best[1]):
            best = (score, node.name)
    return best[1] if best else None


def add(total: dict[str, int], more: Mapping[str, int]) -> None:
    for name, amount in more.items():
        total[name] = total.get(name, 0) + amount


class ProcessExited(BaseException):
    """The calling process is gone (it exited, or was killed): nothing it does after that
    reaches the world. A ``BaseException``, so the dispatcher's handlers cannot swallow it,
    as nothing runs in a process after ``os._exit``."""


# ----- faults -------------------------------------------------------------------------------
class Fault(StrEnum):
    """What the next matching request to a cluster runs into."""

    UNAVAILABLE = "unavailable"  # no answer; nothing happened
    SERVER_ERROR = "server-error"  # 500; nothing happened
    THROTTLED = "throttled"  # 429 with Retry-After; nothing happened
    LOST_RESPONSE = "lost-response"  # it happened, then the answer was lost (a timeout)
    TIMEOUT_AFTER = "timeout-after"  # it happened, then 504 (the API server timed out)
    CONFLICT_AFTER = "conflict-after"  # create: a first try landed, its retry got 409
    #: 403 from the authorizer; nothing happened. A restarted API server answers so until
    #: its RBAC informers have synced (kubernetes/kubernetes#121635).
    FORBIDDEN = "forbidden"

    @property
    def after(self) -> bool:
        """Whether the request took effect before the failure."""
        return self in (Fault.LOST_RESPONSE, Fault.TIMEOUT_AFTER, Fault.CONFLICT_AFTER)


@dataclass
class _Armed:
    verb: str  # "create" | "delete" | "read" | "any"
    fault: Fault
    job_id: str | None = None  # only requests about this job's pods


# ----- pods ----------------------------------------------------------------------------------
@dataclass
class SimPod:
    """A pod in a cluster, and when its next stage is due."""

    obj: dict[str, Any]
    created_at: float
    created_by: str
    next_bind: float | None = None  # when the scheduler tries to bind it (None: waits)
    bound_at: float | None = None
    started_at: float | None = None
    waiting: bool = False  # never-start: its container waits forever

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    @property
    def job_id(self) -> str | None:
        return (self.obj["metadata"].get("labels") or {}).get(JOB_ID_LABEL)

    @property
    def attempt(self) -> str | None:
        return (self.obj["metadata"].get("labels") or {}).get(ATTEMPT_LABEL)

    @property
    def phase(self) -> str:
        return str((self.obj.get("status") or {}).get("phase", "Pending"))

    @property
    def live(self) -> bool:
        """Whether its task may be running or may still start."""
        return self.phase not in ("Succeeded", "Failed")

    def annotation(self, key: str) -> str | None:
        value = (self.obj["metadata"].get("annotations") or {}).get(key)
        return None if value is None else str(value)


@dataclass(frozen=True)
class Created:
    """One pod creation, as the cluster saw it."""

    at: float
    cluster: str
    namespace: str
    name: str
    job_id: str | None
    by: str
    term: int


class FakeCluster:
    """One cluster: its API server's pods, its scheduler and kubelet, reachability, faults."""

    def __init__(self, spec: ClusterSpec, world: World) -> None:
        self.spec = spec
        self.name = spec.name
        self.info = spec.info
        self.world = world
        self.reachable = True
        self.pods: dict[tuple[str, str], SimPod] = {}
        self.nodes = {str(n["metadata"]["name"]): NodeInfo.from_k8s(n) for n in spec.nodes}
        self.faults: list[_Armed] = []
        self._uids = 0

    # ----- what the world sees -------------------------------------------------------------
    def pod(self, namespace: str, name: str) -> SimPod | None:
        return self.pods.get((namespace, name))

    def live_pods(self) -> list[SimPod]:
        return [p for p in self.pods.values() if p.live]

    def node_infos(self) -> list[NodeInfo]:
        """Nodes with what the bound, unfinished pods take on them."""
        usage = usage_by_node(p.obj for p in self.pods.values())
        return [
            NodeInfo(
                name=n.name,
                allocatable=n.allocatable,
                used=usage.get(n.name, {}),
                labels=n.labels,
                taints=n.taints,
                ready=n.ready,
                unschedulable=n.unschedulable,
            )
            for n in self.nodes.values()
        ]

    # ----- faults --------------------------------------------------------------------------
    def arm(self, verb: str, fault: Fault, job_id: str | None = None) -> None:
        """The next ``verb`` request (about ``job_id``'s pods, if given) meets ``fault``."""
        self.faults.append(_Armed(verb, fault, job_id))

    def _take(self, verb: str, job_id: str | None) -> Fault | None:
        for index, armed in enumerate(self.faults):
            if armed.verb not in (verb, "any"):
                continue
            if armed.job_id is not None and armed.job_id != job_id:
                continue
            if armed.fault is Fault.CONFLICT_AFTER and verb != "create":
                continue
            del self.faults[index]
            self.world.log(f"{self.name}: {verb} meets fault {armed.fault.value}")
            return armed.fault
        return None

    def _failure(self, fault: Fault, what: str) -> Exception:
        if fault in (Fault.UNAVAILABLE, Fault.LOST_RESPONSE):
            return ClusterUnavailable(f"{what}: read timed out (sim)", cluster=self.name)
        if fault is Fault.SERVER_ERROR:
            return api_error(
                self.name,
                what,
                500,
                {"reason": "InternalError", "message": "etcdserver: request timed out"},
            )
        if fault is Fault.TIMEOUT_AFTER:
            return api_error(
                self.name,
                what,
                504,
                {"reason": "Timeout", "message": "the server was unable to return a response"},
            )
        if fault is Fault.FORBIDDEN:
            verb, _, _ = what.partition(" ")
            return api_error(
                self.name,
                what,
                403,
                {
                    "reason": "Forbidden",
                    "message": f'pods is forbidden: User "system:serviceaccount:dispatch:'
                    f'dispatcher" cannot {verb} resource "pods" in API group "" in the '
                    'namespace "dispatch"',
                },
            )
        if fault is Fault.THROTTLED:
            return api_error(
                self.name,
                what,
                429,
                {"reason": "TooManyRequests", "message": "too many requests"},
                retry_after_header="3",
            )
        raise AssertionError(fault)

    def _reach(self, what: str, caller: str) -> None:
        if caller in self.world.dead:
            raise ProcessExited(caller)
        if not self.reachable:
            raise ClusterUnavailable(f"{what}: connection refused (sim)", cluster=self.name)

    # ----- the API server ---------------------------------------------------------------------
    def api_create(
        self, caller: str, namespace: str, manifest: Mapping[str, Any]
    ) -> dict[str, Any]:
        metadata = manifest.get("metadata") or {}
        name = str(metadata.get("name", ""))
        what = f"create pod {namespace}/{name}"
        job_id = (metadata.get("labels") or {}).get(JOB_ID_LABEL)
        self._reach(what, caller)
        self.world.create_requests += 1
        if job_id is not None and job_id in self.world.permanently_refused:
            self.world.violation(
                f"{caller} sent {what} to {self.name} again: job {job_id} was refused for good "
                f"before (a permanent error must fail the job at once)"
            )
        fault = self._take("create", job_id)
        if fault is not None and not fault.after:
            raise self._failure(fault, what)
        refusal = (metadata.get("annotations") or {}).get(CREATE_ERROR)
        if refusal is not None:
            self.world.refused_creates.append((self.name, name, job_id, caller))
            if job_id is not None:
                self.world.permanently_refused.add(job_id)
            raise api_error(
                self.name,
                what,
                int(refusal),
                {
                    "reason": "Invalid" if refusal == "422" else "Forbidden",
                    "message": f'Pod "{name}" is invalid',
                    "details": {
                        "causes": [
                            {
                                "field": "spec.containers[0].image",
                                "message": "Required value",
                                "reason": "FieldValueRequired",
                            }
                        ]
                    },
                },
            )
        if (namespace, name) in self.pods:
            raise api_error(
                self.name,
                what,
                409,
                {"reason": "AlreadyExists", "message": f'pods "{name}" already exists'},
            )
        pod = self._create(caller, namespace, manifest)
        if fault is Fault.CONFLICT_AFTER:
            raise api_error(
                self.name,
                what,
                409,
                {"reason": "AlreadyExists", "message": f'pods "{name}" already exists'},
            )
        if fault is not None:
            raise self._failure(fault, what)
        return copy.deepcopy(pod.obj)

    def _create(self, caller: str, namespace: str, manifest: Mapping[str, Any]) -> SimPod:
        now = self.world.clock()
        obj = copy.deepcopy(dict(manifest))
        metadata = obj.setdefault("metadata", {})
        metadata["namespace"] = namespace
        self._uids += 1
        metadata["uid"] = f"{self.name}-uid-{self._uids}"
        metadata["creationTimestamp"] = _iso(now)
        obj["status"] = {"phase": "Pending"}
        pod = SimPod(obj, now, caller, next_bind=now + BIND_LATENCY)
        self.world.check_create(caller, self.name, pod)
        self.pods[(namespace, pod.name)] = pod
        self._changed(pod, "ADDED")
        return pod

    def api_delete(
        self, caller: str, namespace: str, name: str, grace_period_seconds: int | None = None
    ) -> None:
        del grace_period_seconds  # deleted pods go at once, as on the test stack
        what = f"delete pod {namespace}/{name}"
        self._reach(what, caller)
        existing = self.pods.get((namespace, name))
        fault = self._take("delete", existing.job_id if existing else None)
        if fault is not None and not fault.after:
            raise self._failure(fault, what)
        if existing is None:
            raise api_error(
                self.name, what, 404, {"reason": "NotFound", "message": f'pods "{name}" not found'}
            )
        self.remove(existing)
        if fault is not None:
            raise self._failure(fault, what)

    def api_read(self, caller: str, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"read pod {namespace}/{name}"
        self._reach(what, caller)
        existing = self.pods.get((namespace, name))
        fault = self._take("read", existing.job_id if existing else None)
        if fault is not None:
            raise self._failure(fault, what)
        return None if existing is None else copy.deepcopy(existing.obj)

    def api_list(self, caller: str, namespace: str | None = None) -> list[dict[str, Any]]:
        self._reach("list pods", caller)
        fault = self._take("list", None)
        if fault is not None:
            raise self._failure(fault, "list pods")
        return [
            copy.deepcopy(p.obj)
            for p in self.pods.values()
            if namespace is None or p.namespace == namespace
        ]

    def remove(self, pod: SimPod) -> None:
        """The pod is gone (deleted through the API, or behind the dispatcher's back)."""
        del self.pods[(pod.namespace, pod.name)]
        self._changed(pod, "DELETED")
        self._capacity_freed()

    # ----- scheduler and kubelet --------------------------------------------------------------
    def next_due(self) -> float | None:
        due: list[float] = []
        for pod in self.pods.values():
            moment = self._due(pod)
            if moment is not None:
                due.append(moment)
        return min(due, default=None)

    def _due(self, pod: SimPod) -> float | None:
        if not pod.live:
            return None
        if pod.bound_at is None:
            return pod.next_bind
        if pod.started_at is None:
            if pod.waiting:
                return None
            delay = pod.annotation(START_DELAY)
            return pod.bound_at + (parse_duration(delay) if delay else DEFAULT_START_DELAY)
        for key in (SUCCEED_AFTER, FAIL_AFTER):
            after = pod.annotation(key)
            if after is not None:
                return pod.started_at + parse_duration(after)
        return None  # runs until deleted

    def step(self, now: float) -> bool:
        """Apply every stage due by ``now``; whether anything changed."""
        changed = False
        for pod in list(self.pods.values()):
            moment = self._due(pod)
            if moment is None or moment > now:
                continue
            changed = True
            if pod.bound_at is None:
                self._bind(pod, now)
            elif pod.started_at is None:
                self._start(pod, now)
            else:
                self._finish(pod, now)
        return changed

    def _bind(self, pod: SimPod, now: float) -> None:
        node = choose_node(self.node_infos(), pod.obj)
        status = pod.obj["status"]
        if node is None:
            pod.next_bind = None  # until capacity frees up
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": f"0/{len(self.nodes)} nodes are available: insufficient resources",
            }
            if status.get("conditions") != [condition]:
                status["conditions"] = [condition]
                self._changed(pod, "MODIFIED")
            return
        pod.bound_at = now
        pod.next_bind = None
        pod.obj["spec"]["nodeName"] = node
        status["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        self._changed(pod, "MODIFIED")

    def _start(self, pod: SimPod, now: float) -> None:
        status = pod.obj["status"]
        image = pod.obj["spec"]["containers"][0].get("image")
        reason = pod.annotation(NEVER_START)
        if reason is not None:
            pod.waiting = True
            status["containerStatuses"] = [
                {
                    "name": "base",
                    "image": image,
                    "ready": False,
                    "state": {"waiting": {"reason": reason, "message": f"sim: {reason}"}},
                }
            ]
            self._changed(pod, "MODIFIED")
            return
        pod.started_at = now
        status["phase"] = "Running"
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
        ]
        status["containerStatuses"] = [
            {
                "name": "base",
                "image": image,
                "ready": True,
                "state": {"running": {"startedAt": _iso(now)}},
            }
        ]
        self._changed(pod, "MODIFIED")

    def _finish(self, pod: SimPod, now: float) -> None:
        status = pod.obj["status"]
        succeeded = pod.annotation(SUCCEED_AFTER) is not None
        code = 0 if succeeded else int(pod.annotation(EXIT_CODE) or "1")
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if succeeded else (pod.annotation(REASON) or "Error"),
            "finishedAt": _iso(now),
        }
        message = pod.annotation(TERMINATION_MESSAGE)
        if message is not None:
            terminated["message"] = message
        status["phase"] = "Succeeded" if succeeded else "Failed"
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False"},
        ]
        status["containerStatuses"] = [
            {
                "name": "base",
                "image": pod.obj["spec"]["containers"][0].get("image"),
                "ready": False,
                "state": {"terminated": terminated},
            }
        ]
        self._changed(pod, "MODIFIED")
        self._capacity_freed()

    def _capacity_freed(self) -> None:
        now = self.world.clock()
        for pod in self.pods.values():
            if pod.live and pod.bound_at is None and pod.next_bind is None:
                pod.next_bind = now

    def _changed(self, pod: SimPod, event_type: str) -> None:
        if event_type != "ADDED":
            node = pod.obj["spec"].get("nodeName")
            self.world.log(
                f"pod {pod.name} on {self.name}: {event_type.lower()} {pod.phase}"
                + (f" on {node}" if node and event_type == "MODIFIED" else "")
            )
        self.world.bump(pod.obj)
        self.world.emit(self.name, event_type, copy.deepcopy(pod.obj))


# ----- the lease and the store ----------------------------------------------------------------
@dataclass
class Lease:
    """The leader Lease as the API server holds it."""

    holder: str | None = None
    term: int = 0
    renewed_at: float = 0.0


# ----- the runner -----------------------------------------------------------------------------
class ManualRunner:
    """The ``Runner`` protocol: submitted functions wait until the test runs them."""

    def __init__(self, world: World, process: str) -> None:
        self.world = world
        self.process = process
        self.pending: list[Callable[[], None]] = []
        self.ran = 0

    def submit(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)

    def run(self, index: int = 0) -> None:
        fn = self.pending.pop(index)
        self.ran += 1
        try:
            fn()
        except ProcessExited:
            pass
        except Exception as exc:  # a production runner would log it; here it is a finding
            self.world.violation(
                f"{self.process}: a runner task raised {exc!r}\n"
                + "".join(traceback.format_exception(exc)[-6:])
            )


# ----- the world ------------------------------------------------------------------------------
class World:
    """Clusters, clock, Lease and record store, with the record of what really happened."""

    def __init__(
        self,
        topology: Iterable[ClusterSpec] | None = None,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
    ) -> None:
        self.clock = FakeClock()
        self.started = self.clock()
        self.clusters = {
            spec.name: FakeCluster(spec, self) for spec in topology or default_topology()
        }
        self.lease = Lease()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        #: Processes whose renewals fail (the state cluster is unreachable for them).
        self.renewal_blocked: set[str] = set()
        #: Processes that exited or were killed: whatever they still try is refused.
        self.dead: set[str] = set()
        self.store = RecordingStore(self)
        self.caches: list[FakeCache] = []
        self.violations: list[str] = []
        self.created: list[Created] = []
        self.create_requests = 0
        self.refused_creates: list[tuple[str, str, str | None, str]] = []
        self.permanently_refused: set[str] = set()
        self.trace: list[str] = []
        self._seq = 0
        self._rv = 0

    # ----- bookkeeping ------------------------------------------------------------------------
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @property
    def version(self) -> int:
        """The last resourceVersion handed out: moves with every change of any pod."""
        return self._rv

    def bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    def log(self, line: str) -> None:
        self.trace.append(f"[{self.clock() - self.started:8.2f}] {line}")

    def violation(self, text: str) -> None:
        self.log("VIOLATION " + text.splitlines()[0])
        self.violations.append(text)

    def emit(self, cluster: str, event_type: str, pod: dict[str, Any]) -> None:
        for cache in self.caches:
            if not cache.closed:
                cache.receive(cluster, event_type, pod)

    # ----- what really happened ---------------------------------------------------------------
    def pods(self) -> list[tuple[str, SimPod]]:
        return [(name, pod) for name, c in self.clusters.items() for pod in c.pods.values()]

    def live_pods_by_job(self) -> dict[str, list[tuple[str, SimPod]]]:
        by_job: dict[str, list[tuple[str, SimPod]]] = {}
        for cluster, pod in self.pods():
            if pod.live and pod.job_id:
                by_job.setdefault(pod.job_id, []).append((cluster, pod))
        return by_job

    def check_create(self, caller: str, cluster: str, pod: SimPod) -> None:
        """At the moment a pod comes into being: was its attempt recorded first, by the
        leader, and was this job not refused for good already?"""
        job_id = pod.job_id
        where = f"pod {pod.name} on {cluster} created by {caller}"
        self.created.append(
            Created(self.clock(), cluster, pod.namespace, pod.name, job_id, caller, self.lease.term)
        )
        self.log(f"{where} (attempt {pod.attempt})")
        if job_id is None:
            self.violation(f"{where} has no job id label")
            return
        stored = self.store.peek(job_id)
        if stored is None:
            self.violation(f"{where}: job {job_id} has no record (record before pod)")
        elif (cluster, pod.name) not in record_attempts(stored.record):
            self.violation(
                f"{where}: the record of job {job_id} (state {record_state(stored.record)}) "
                f"does not name this attempt (write-ahead)"
            )
        if not self.holds_lease(caller):
            self.violation(
                f"{where} without holding the lease (holder {self.lease.holder}, "
                f"term {self.lease.term}, renewed {self.clock() - self.lease.renewed_at:.1f}s ago)"
            )

    # ----- the lease --------------------------------------------------------------------------
    def holds_lease(self, process: str) -> bool:
        lease = self.lease
        return lease.holder == process and self.clock() < lease.renewed_at + self.lease_duration

    def fence_for(self, process: str) -> Fence | None:
        """What the process's elector would say: its fence while its last renew is fresher
        than the renew deadline (it stops before anyone else can take over)."""
        lease = self.lease
        if lease.holder == process and self.clock() < lease.renewed_at + self.renew_deadline:
            return Fence(process, lease.term)
        return None

    def try_acquire(self, process: str) -> bool:
        """``process`` takes the Lease if it is free or expired."""
        lease = self.lease
        if lease.holder == process and self.holds_lease(process):
            return False
        if lease.holder is not None and self.clock() < lease.renewed_at + self.lease_duration:
            return False
        self.lease = Lease(process, lease.term + 1, self.clock())
        self.store.inner.current_term = self.lease.term
        self.log(f"{process} acquires the lease, term {self.lease.term}")
        return True

    def release(self, process: str) -> None:
        if self.lease.holder == process:
            self.lease = Lease(None, self.lease.term, self.clock())
            self.log(f"{process} releases the lease")

    # ----- reachability and time --------------------------------------------------------------
    def set_reachable(self, cluster: str, reachable: bool) -> None:
        target = self.clusters[cluster]
        if target.reachable == reachable:
            return
        target.reachable = reachable
        self.log(f"{cluster} {'reachable again' if reachable else 'unreachable'}")
        for cache in self.caches:
            if not cache.closed:
                if reachable:
                    cache.back(cluster)
                else:
                    cache.lost(cluster)

    def advance(self, seconds: float) -> None:
        """Move time on, running every pod stage and relist due on the way, in order."""
        target = self.clock() + seconds
        for _ in range(100_000):
            due = [c.next_due() for c in self.clusters.values()]
            due += [c.next_due() for c in self.caches if not c.closed]
            moments = [d for d in due if d is not None]
            moment = max(min(moments), self.clock()) if moments else None
            if moment is None or moment > target:
                break
            self._move(moment)
        self._move(target)

    def _move(self, moment: float) -> None:
        # The holder's elector renews every retry period, so a renewal that works keeps
        # the Lease fresh all along the way.
        holder = self.lease.holder
        renewing = (
            holder is not None and holder not in self.renewal_blocked and self.holds_lease(holder)
        )
        self.clock.set(moment)
        if renewing:
            self.lease.renewed_at = moment
        self._settle_now()

    def _settle_now(self) -> None:
        now = self.clock()
        for _ in range(1000):
            changed = [c.step(now) for c in self.clusters.values()]  # every cluster steps
            if not any(changed):
                break
        for cache in self.caches:
            if not cache.closed:
                cache.tick(now)
