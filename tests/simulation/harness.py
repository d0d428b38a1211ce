"""The simulation harness: real ``Dispatcher`` processes in a ``World``, a client, and the
invariants, judged from the world's side.

``Simulation`` starts dispatcher processes (each with its own cache, runner and view of the
Lease), lets a client submit, cancel and acknowledge, and exposes every step the test may
take: run a dispatcher's loop once, run one of its runner tasks, deliver / drop / duplicate a
watch event, move time, inject a fault, crash a process. ``check()`` judges the world after
any step; ``settle()`` stops the faults and runs everything until nothing is left to do, and
``check_final()`` judges the end state.

The invariants (``check``):

1. at most one live pod per job across all clusters (overlaps under a ``relaunch``
   unreachable policy are counted in ``overlaps`` instead);
2. a record that reached a finished state never changes state again (store history);
3. nothing lost: a job the client was told exists keeps its record until acknowledged, and
   no replica answers "no such job" about a job whose record exists (a client stops there);
4. a job whose record says ``cancelled`` has no live pod at rest (no runner task, no
   undelivered event, every cluster reachable);
5. (at create time, in ``World.check_create``) the pod's attempt was recorded first, the
   creator held the Lease, and the job was not refused for good before;
6. no runner task, loop turn or event listener of a dispatcher raises.

I/O: none; the dispatcher under test runs on the world's fakes.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from dispatcher.core import OnFinishAction, RoutingPolicy, TaskSpec
from dispatcher.dispatching import dispatcher as dispatcher_module
from dispatcher.dispatching.jobs import job_id_for
from dispatcher.dispatching.records import Fence, RecordStore
from dispatcher.errors import DispatcherError, NotFound
from dispatcher.settings import ServiceSettings
from tests.simulation.cache import FakeCache
from tests.simulation.store import FINISHED_STATES, record_state
from tests.simulation.world import ClusterSpec, ManualRunner, ProcessExited, SimPod, World

__all__ = ["Process", "Simulation", "Submission", "sim_service"]


def sim_service(**overrides: Any) -> ServiceSettings:
    """Service settings scaled to the simulation's time: short lingers and timeouts, so a
    settle needs minutes of fake time, not hours. Keys this version does not know are
    left out (the same harness drives older dispatchers)."""
    values: dict[str, Any] = {
        "finished_pod_linger_seconds": 2.0,
        "schedule_timeout_seconds": 30.0,
        "cluster_down_grace_seconds": 30.0,
        "cancel_grace_seconds": 0,
        "max_attempts": 3,
        "cycle_interval_seconds": 1.0,
        "lease_duration_seconds": 15.0,
        **overrides,
    }
    known = ServiceSettings.model_fields
    return ServiceSettings(**{k: v for k, v in values.items() if k in known})


# ----- adapting today's dispatcher (cycle / cancel / JobStore / thread pool) -----------------
class _RunnerExecutor:
    """A ``ThreadPoolExecutor`` look-alike that hands work to a ``ManualRunner``."""

    def __init__(self, runner: ManualRunner) -> None:
        self._runner = runner

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        self._runner.submit(functools.partial(fn, *args, **kwargs))

    def map(self, fn: Callable[..., Any], *iterables: Any) -> Iterator[None]:
        for args in zip(*iterables, strict=False):
            self._runner.submit(functools.partial(fn, *args))
        return iter(())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        del wait, cancel_futures


class _LegacyJobStore:
    """The old ``JobStore`` (save / delete / load_all) over a ``RecordStore``: a save is
    a read then a create or an update, under the term the process believed it had."""

    def __init__(self, store: RecordStore, fence: Callable[[], Fence]) -> None:
        self._store = store
        self._fence = fence

    def save(self, record: dict[str, Any]) -> None:
        stored = self._store.get(record["id"])
        if stored is None:
            self._store.create(record, self._fence())
        else:
            self._store.update(record, stored.version, self._fence())

    def delete(self, job_id: str) -> None:
        self._store.delete(job_id, self._fence())

    def load_all(self) -> list[dict[str, Any]]:
        return [s.record for s in self._store.list()]


class LegacyDispatcher:
    """Today's ``Dispatcher`` (``cycle``, ``cancel``, a ``JobStore``, its own threads) behind
    the new interface. It has no notion of leadership, and its store no fencing."""

    def __init__(
        self,
        cache: Any,
        store: RecordStore,
        *,
        term: Callable[[], int],
        process: str,
        runner: ManualRunner,
        **kwargs: Any,
    ) -> None:
        # Its ConfigMaps were written without resourceVersion or term: nothing refused a
        # write, whoever made it.
        legacy = _LegacyJobStore(store, lambda: Fence(process, term()))
        wanted = inspect.signature(dispatcher_module.Dispatcher).parameters
        self._d: Any = cast(
            Any,
            dispatcher_module.Dispatcher(
                cache,
                legacy,  # type: ignore[arg-type]  # today's JobStore
                **{k: v for k, v in kwargs.items() if k in wanted},
            ),
        )
        self._d._workers.shutdown(wait=False)
        self._d._workers = _RunnerExecutor(runner)

    def reattach(self) -> None:
        self._d.reattach()

    def run_once(self) -> None:
        self._d.cycle()

    def submit(self, spec: TaskSpec) -> tuple[dict[str, Any], bool]:
        result: tuple[dict[str, Any], bool] = self._d.submit(spec)
        return result

    def request_cancel(self, job_id: str) -> None:
        self._d.cancel(job_id)

    def request_acknowledge(self, job_id: str) -> None:
        self._d.acknowledge(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self._d.get(job_id)
        return view

    def list(self) -> list[dict[str, Any]]:
        views: list[dict[str, Any]] = self._d.list()
        return views


def is_legacy() -> bool:
    """Whether the dispatcher in the tree is today's (no runner to inject)."""
    return "runner" not in inspect.signature(dispatcher_module.Dispatcher).parameters


# ----- processes and the client ---------------------------------------------------------------
@dataclass
class Process:
    """One dispatcher replica: its cache, its runner, its dispatcher."""

    name: str
    cache: FakeCache
    runner: ManualRunner
    dispatcher: Any
    led: bool = False  # it has been leader (reattached)
    alive: bool = True
    fenced: bool = False  # it said it lost its fence (on_fenced), and exited
    replaced: bool = False


@dataclass
class Submission:
    """What the client asked for and was told about one task."""

    key: str
    spec: TaskSpec
    job_id: str
    accepted: bool = False  # a submit was answered
    failures: int = 0  # submits that raised
    cancel_requested: bool = False
    ack_requested: bool = False
    acknowledged: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def keeps_pod(self) -> bool:
        return self.spec.on_finish_action is OnFinishAction.KEEP_POD


class SimulationFailure(AssertionError):
    """An invariant does not hold; the message says which, and the trace what happened."""


class Simulation:
    """A world, dispatcher processes in it, a client, and the invariants."""

    def __init__(
        self,
        *,
        topology: tuple[ClusterSpec, ...] | None = None,
        service: ServiceSettings | None = None,
        policy: RoutingPolicy | None = None,
        unreachable: dict[str, Any] | None = None,
        relaunch_allowed: bool = False,
        fair_share: Any = None,
    ) -> None:
        self.service = service or sim_service()
        #: ``FairShareSettings`` for every process (dispatchers that know it).
        self.fair_share = fair_share
        self.world = World(
            topology,
            lease_duration=self.service.lease_duration_seconds,
            renew_deadline=getattr(
                self.service,
                "renew_deadline_seconds",
                self.service.lease_duration_seconds * 2 / 3,
            ),
        )
        self.policy = policy
        self.unreachable = unreachable
        self.relaunch_allowed = relaunch_allowed
        self.legacy = is_legacy()
        self.processes: list[Process] = []
        self.submissions: dict[str, Submission] = {}
        self.overlaps: set[str] = set()
        self._names = itertools.count(1)
        self._checked = 0
        self._finished: dict[str, str] = {}
        self.failed = False
        self.steps = 0
        self.start_process()
        self.elect()
        self.drain()  # the first leader has re-attached before the client starts

    # ----- processes --------------------------------------------------------------------------
    def start_process(self) -> Process:
        name = f"p{next(self._names)}"
        cache = FakeCache(self.world, name)
        runner = ManualRunner(self.world, name)
        process = Process(name, cache, runner, None)
        kwargs: dict[str, Any] = {
            "clusters": tuple(self.world.clusters),
            "policy": self.policy,
            "service": self.service,
            "unreachable": self.unreachable,
            "clock": self.world.clock,
            "fence": functools.partial(self.world.fence_for, name),
            "runner": runner,
            "draw": lambda: 0.5,
            "on_fenced": functools.partial(self._fenced, process),
            "fair_share": self.fair_share,
        }
        if self.legacy:
            process.dispatcher = LegacyDispatcher(
                cache,
                self.world.store,
                term=lambda: self.world.lease.term,
                process=name,
                **kwargs,
            )
        else:
            wanted = inspect.signature(dispatcher_module.Dispatcher).parameters
            process.dispatcher = dispatcher_module.Dispatcher(
                cache, self.world.store, **{k: v for k, v in kwargs.items() if k in wanted}
            )
        self.processes.append(process)
        self.world.log(f"{name} starts")
        return process

    def _fenced(self, process: Process) -> None:
        """``on_fenced``: the service exits at once (``os._exit``); a replacement starts at
        the next step."""
        process.fenced = True
        self.world.log(f"{process.name} says it lost its fence and exits")
        self._exit(process)

    def _exit(self, process: Process) -> None:
        process.alive = False
        self.world.dead.add(process.name)
        self.world.renewal_blocked.add(process.name)  # a dead process renews nothing
        process.cache.closed = True
        process.runner.pending.clear()
        process.cache.events.clear()
        if process.cache in self.world.caches:
            self.world.caches.remove(process.cache)

    def reap(self) -> None:
        """Replace processes that exited by themselves (Kubernetes restarts them)."""
        if any(p.fenced and not p.replaced for p in self.processes):
            for process in self.processes:
                process.replaced = True
            if not [p for p in self.alive() if not p.led]:
                self.start_process()
            self.elect()

    def alive(self) -> list[Process]:
        """Live processes, the newest first."""
        return [p for p in reversed(self.processes) if p.alive]

    def leader(self) -> Process | None:
        holder = self.world.lease.holder
        for process in self.alive():
            if process.name == holder and self.world.holds_lease(holder):
                return process
        return None

    def front(self) -> Process | None:
        """The replica that serves job requests: the one whose elector says it leads
        (the API answers 503 on the others)."""
        for process in self.alive():
            if self.world.fence_for(process.name) is not None:
                return process
        return None

    def elect(self) -> None:
        """A live replica that never led takes the Lease once it is free, and reattaches.

        As in the service (``Service._lead``), the re-attachment runs apart from the
        election, as a task of the process's runner: from the moment the replica holds
        the Lease its API takes job requests, also before the re-attachment has run.
        """
        if self.leader() is not None:
            return
        for process in reversed(self.alive()):  # the oldest candidate first
            if process.led or process.fenced:
                continue
            if self.world.try_acquire(process.name):
                process.led = True
                reattach = process.dispatcher.reattach
                process.runner.submit(functools.partial(self._guard, process, "reattach", reattach))
                return

    def crash(self, process: Process, *, graceful: bool = False, replace: bool = True) -> None:
        """The process dies (kill -9, or a clean stop that releases the Lease); its
        runner's work and undelivered events die with it. A replacement starts (unless
        ``replace`` is false) if no other replica stands by."""
        self._exit(process)
        if graceful:
            self.world.release(process.name)
        self.world.log(f"{process.name} {'stops' if graceful else 'is killed'}")
        if replace and not [p for p in self.alive() if not p.led and not p.fenced]:
            self.start_process()
        self.elect()

    def _guard(self, process: Process, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ProcessExited:
            return None
        except Exception as exc:  # a dispatcher entry point must not raise
            import traceback

            self.world.violation(
                f"{process.name}: {what} raised {exc!r}\n"
                + "".join(traceback.format_exception(exc)[-6:])
            )
            return None

    # ----- the client -------------------------------------------------------------------------
    def _request(self, what: str, fn: Callable[[Process], Any]) -> tuple[bool, Any]:
        """Send a client request to the replica that leads; (answered, result). A refusal
        (``DispatcherError``: a 4xx or 503 for the API) or no leader is not answered; any
        other exception is a finding."""
        self.reap()
        process = self.front()
        if process is None:
            self.world.log(f"client: {what}: no leader (503)")
            return False, "no leader"
        try:
            return True, fn(process)
        except ProcessExited:
            self.world.log(f"client: {what}: the connection to {process.name} broke")
            return False, "process exited"
        except NotFound as exc:
            if self.world.store.peek(exc.job_id) is not None:
                # A client takes a 404 at its word: the job is lost to it.
                self.fail(f"client: {what}: {process.name} said {exc} while its record exists")
            self.world.log(f"client: {what} to {process.name} failed: {exc}")
            return False, f"{process.name}: {exc}"
        except DispatcherError as exc:
            self.world.log(f"client: {what} to {process.name} failed: {exc}")
            return False, f"{process.name}: {exc}"
        except Exception as exc:
            self._guard(process, what, functools.partial(_reraise, exc))
            return False, repr(exc)

    def submit(self, spec: TaskSpec) -> Submission:
        assert spec.idempotency_key is not None
        key = spec.idempotency_key
        sub = self.submissions.get(key)
        if sub is None:
            sub = Submission(key, spec, job_id_for(key))
            self.submissions[key] = sub
        answered, result = self._request(f"submit {key}", lambda p: p.dispatcher.submit(spec))
        if not answered:
            sub.failures += 1
            sub.errors.append(str(result))
            return sub
        sub.accepted = True
        self.world.log(f"client: submit {key}: {result[0].get('state')}")
        return sub

    def cancel(self, sub: Submission) -> None:
        answered, _ = self._request(
            f"cancel {sub.key}", lambda p: p.dispatcher.request_cancel(sub.job_id)
        )
        if answered:
            sub.cancel_requested = True
            self.world.log(f"client: cancel {sub.key} requested")

    def acknowledge(self, sub: Submission) -> None:
        def acknowledge(process: Process) -> Any:
            dispatcher = process.dispatcher
            ack = getattr(dispatcher, "request_acknowledge", None) or dispatcher.acknowledge
            return ack(sub.job_id)

        sub.ack_requested = True
        answered, _ = self._request(f"acknowledge {sub.key}", acknowledge)
        if answered:
            sub.acknowledged = True
            self.world.log(f"client: acknowledge {sub.key} answered")

    # ----- steps ------------------------------------------------------------------------------
    def run_once(self, process: Process | None = None) -> None:
        self.reap()
        process = process or self.leader()
        if process is not None and process.alive:
            self._guard(process, "run_once", process.dispatcher.run_once)

    def run_task(self, process: Process, index: int) -> None:
        self.reap()
        if process.runner.pending:
            process.runner.run(index % len(process.runner.pending))

    def advance(self, seconds: float) -> None:
        self.reap()
        self.world.advance(seconds)
        self.elect()

    def set_reachable(self, cluster: str, reachable: bool) -> None:
        self.world.set_reachable(cluster, reachable)

    def busy(self) -> bool:
        return any(p.runner.pending or p.cache.events for p in self.alive())

    def drain(self, limit: int = 5000) -> None:
        """Deliver every event and run every runner task, oldest first, until none is left."""
        for _ in range(limit):
            for process in self.alive():
                if process.cache.events:
                    process.cache.deliver(process.cache.heads()[0])
                    break
                if process.runner.pending:
                    process.runner.run(0)
                    break
            else:
                return
        raise SimulationFailure(f"still busy after {limit} events and tasks: a feedback loop?")

    def run_tasks(self, *, newest_first: bool = False) -> None:
        """Run every runner task of every live process, checking after each one."""
        for _ in range(5000):
            busy = [p for p in self.alive() if p.runner.pending]
            if not busy:
                return
            runner = busy[0].runner
            runner.run(len(runner.pending) - 1 if newest_first else 0)
            self.check()
        raise SimulationFailure("runner tasks keep coming: a feedback loop?")

    def deliver_events(self) -> None:
        """Deliver every pending watch event, oldest first, checking after each one."""
        for _ in range(5000):
            busy = [p for p in self.alive() if p.cache.events]
            if not busy:
                return
            busy[0].cache.deliver(busy[0].cache.heads()[0])
            self.check()
        raise SimulationFailure("watch events keep coming: a feedback loop?")

    def run_for(self, seconds: float, step: float = 1.0) -> None:
        """Let the leader work while time passes: each step, drain, loop once, drain, and
        move time on, checking the world after each."""
        for _ in range(round(seconds / step)):
            self.drain()
            self.check()
            self.run_once()
            self.drain()
            self.check()
            self.advance(step)
            self.check()

    def pods_created(self, job_id: str) -> list[str]:
        """Every pod ever created for ``job_id``, as ``name@cluster``."""
        return [f"{c.name}@{c.cluster}" for c in self.world.created if c.job_id == job_id]

    def state(self, job_id: str) -> str | None:
        """The job's state as its record says (the world's truth)."""
        stored = self.world.store.peek(job_id)
        return None if stored is None else record_state(stored.record)

    # ----- invariants -------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        self.failed = True
        tail = "\n".join(self.world.trace[-150:])
        raise SimulationFailure(f"{message}\n--- last events of the world ---\n{tail}")

    def check(self) -> None:
        """Every invariant that must hold after any step."""
        self.reap()
        self.steps += 1
        world = self.world
        if world.violations:
            self.fail("violations seen by the world:\n" + "\n".join(world.violations))
        for job_id, pods in world.live_pods_by_job().items():
            if len(pods) > 1:
                names = ", ".join(f"{p.name} on {c}" for c, p in pods)
                if not self.relaunch_allowed:
                    self.fail(f"job {job_id} has {len(pods)} live pods: {names}")
                self.overlaps.add(job_id)
        history = world.store.history
        for write in history[self._checked :]:
            if write.op == "delete":
                self._finished.pop(write.job_id, None)
                continue
            state = record_state(write.record or {})
            before = self._finished.get(write.job_id)
            if before is not None and state != before:
                self.fail(
                    f"job {write.job_id} was {before} and then written {state} "
                    f"by {write.writer} (write {write.seq})"
                )
            if state in FINISHED_STATES:
                self._finished[write.job_id] = state
        self._checked = len(history)
        for sub in self.submissions.values():
            if sub.accepted and not sub.ack_requested and world.store.peek(sub.job_id) is None:
                self.fail(f"job {sub.job_id} ({sub.key}) was accepted but its record is gone")
        if self.at_rest():
            live = world.live_pods_by_job()
            for sub in self.submissions.values():
                stored = world.store.peek(sub.job_id)
                cancelled = stored is not None and record_state(stored.record) == "cancelled"
                if cancelled and sub.job_id in live:
                    names = ", ".join(f"{p.name} on {c}" for c, p in live[sub.job_id])
                    self.fail(f"job {sub.job_id} is cancelled but its pod runs: {names}")

    def at_rest(self) -> bool:
        return not self.busy() and all(c.reachable for c in self.world.clusters.values())

    # ----- the end ----------------------------------------------------------------------------
    def heal(self) -> None:
        """No more faults: every cluster answers, every renewal goes through, the
        processes that lost their lease exit, a leader is elected."""
        world = self.world
        for cluster in world.clusters.values():
            cluster.faults.clear()
            world.set_reachable(cluster.name, True)
        world.store.faults.clear()
        world.renewal_blocked = {p.name for p in self.processes if not p.alive}
        for process in self.alive():
            if process.led and self.leader() is not process:
                self.crash(process)
        if self.leader() is None and not [p for p in self.alive() if not p.led]:
            self.start_process()
        for _ in range(100):
            self.elect()
            if self.leader() is not None:
                return
            self.advance(1.0)
        self.fail("no leader could be elected within 100 s of healing")

    def settle(self, max_seconds: float = 300.0) -> None:
        """Heal, then run the world until every job is finished and nothing is left, or
        ``max_seconds`` of fake time passed. Time moves a second at a time while anything
        changes, and in growing steps (up to 8 s) while nothing does."""
        self.heal()
        start = self.world.clock()
        step = 1.0
        while self.world.clock() - start < max_seconds:
            leader = self.leader()
            if leader is None:
                self.heal()
                leader = self.leader()
            assert leader is not None
            for sub in self.submissions.values():
                if not sub.accepted:
                    self.submit(sub.spec)  # the client retries what failed (the hook does)
            before = self._fingerprint()
            self.drain()
            self.run_once(leader)
            self.drain()
            if world_done := self.done():
                self.world.log(f"settled: {world_done}")
                return
            step = 1.0 if self._fingerprint() != before else min(step * 2, 8.0)
            self.advance(step)
            if self.world.violations:
                self.check()

    def _fingerprint(self) -> tuple[int, ...]:
        """Changes whenever the world does (a write, a pod, a request, a task)."""
        world = self.world
        return (
            len(world.store.history),
            world.version,
            world.create_requests,
            len(world.trace),
            sum(p.runner.ran for p in self.processes),
        )

    def done(self) -> str:
        """A sentence if the end state is reached, else ``""``."""
        if self.busy():
            return ""
        for sub in self.submissions.values():
            stored = self.world.store.peek(sub.job_id)
            if not sub.accepted:
                return ""
            if stored is None:
                if not sub.ack_requested:
                    return ""
            elif record_state(stored.record) not in FINISHED_STATES:
                return ""
        for _cluster, pod in self.world.pods():
            if not self._may_stay(pod):
                return ""
        return f"{len(self.submissions)} jobs finished"

    def _may_stay(self, pod: SimPod) -> bool:
        if pod.live:
            return False
        sub = self._submission_of(pod.job_id)
        if sub is None:
            return False
        action = sub.spec.on_finish_action
        if action is OnFinishAction.KEEP_POD:
            return True
        return action is OnFinishAction.DELETE_SUCCEEDED_POD and pod.phase == "Failed"

    def _submission_of(self, job_id: str | None) -> Submission | None:
        for sub in self.submissions.values():
            if sub.job_id == job_id:
                return sub
        return None

    def check_final(self) -> None:
        """After ``settle``: every job finished (or acknowledged), no pod left behind."""
        self.check()
        problems: list[str] = []
        for sub in self.submissions.values():
            stored = self.world.store.peek(sub.job_id)
            if not sub.accepted:
                problems.append(f"{sub.key}: never accepted ({'; '.join(sub.errors[-2:])})")
            elif stored is None:
                if not sub.ack_requested:
                    problems.append(f"{sub.key}: record gone without acknowledgement")
            elif (state := record_state(stored.record)) not in FINISHED_STATES:
                problems.append(
                    f"{sub.key} ({sub.job_id}): still {state} after faults stopped "
                    f"({stored.record.get('reason') or stored.record.get('message') or ''})"
                )
        for cluster, pod in self.world.pods():
            if not self._may_stay(pod):
                stored = self.world.store.peek(pod.job_id or "")
                state = record_state(stored.record) if stored else "no record"
                problems.append(f"pod {pod.name} ({pod.phase}) left on {cluster}; job {state}")
        if self.busy():
            problems.append("dispatchers still busy")
        if problems:
            self.fail("not settled:\n" + "\n".join(problems))


def _reraise(exc: BaseException) -> None:
    raise exc
