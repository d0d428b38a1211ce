"""The dispatcher keeps its promises under any interleaving of work, events and faults.

Hypothesis drives the real ``Dispatcher`` in a simulated world (``world``, ``harness``): it
submits, cancels and acknowledges tasks, runs the dispatcher's loop and its runner tasks
in any order, delivers, drops, duplicates and reorders watch events, moves time, and
injects every fault the issue lists: a create whose answer is lost after it happened, 409s,
5xx, 429 with Retry-After, a permanent 422, store write failures before and after the write,
a concurrent writer, a leader that cannot renew, crash and restart at any step, clusters
unreachable and back, pods deleted behind the dispatcher's back.

After every step ``Simulation.check`` judges the world (pods in the clusters, the store's
write history), never the dispatcher's account of itself; at the end the faults stop, time
passes, and every job must be finished with nothing left behind (``check_final``).

Profiles: ``KD_SIM_EXAMPLES`` and ``KD_SIM_STEPS`` scale a run (defaults: CI-sized). The
fixed-seed test replays the same schedules on every run; the random one explores new
ones, and a failure prints the ``@reproduce_failure`` blob to replay it.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dispatcher.core import OnFinishAction, TaskSpec, parse_task_spec
from tests.simulation.harness import Process, Simulation
from tests.simulation.store import StoreFault
from tests.simulation.world import CREATE_ERROR, FAIL_AFTER, NEVER_START, SUCCEED_AFTER, Fault

KINDS = ("cpu", "a100", "h100", "any-gpu", "impossible", "refused", "never-start")
CLUSTERS = ("plane", "gpu-a100", "gpu-h100")
VERBS = ("create", "delete", "read", "any")


def task(
    number: int, kind: str, *, gpus: int, seconds: int, succeed: bool, finish: str
) -> TaskSpec:
    """A task of one of the shapes the simulation knows, its outcome in its annotations."""
    annotations = {SUCCEED_AFTER if succeed else FAIL_AFTER: f"{seconds}s"}
    fields: dict[str, Any] = {
        "image": "busybox:1.36",
        "name": f"t{number}",
        "idempotency_key": f"key-{number}",
        "on_finish_action": finish,
        "startup_timeout_seconds": 10,
        "container_resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
    }
    if kind in ("a100", "h100", "any-gpu", "impossible"):
        count = 16 if kind == "impossible" else gpus
        fields["container_resources"]["limits"] = {"nvidia.com/gpu": str(count)}
        if kind in ("a100", "h100"):
            fields["requirements"] = {"gpu_model": kind}
    if kind == "refused":
        annotations[CREATE_ERROR] = "422"
    if kind == "never-start":
        annotations = {NEVER_START: "ImagePullBackOff"}
    fields["annotations"] = annotations
    return parse_task_spec(fields)


class DispatcherSimulation(RuleBasedStateMachine):
    """One world, its dispatchers and a client; hypothesis picks every step."""

    def __init__(self) -> None:
        super().__init__()
        self.sim = Simulation()
        self.count = 0

    # ----- helpers --------------------------------------------------------------------------
    def _process(self, index: int) -> Process:
        """The leader first, then the other live replicas (0 shrinks to the leader)."""
        leader = self.sim.leader()
        others = [p for p in self.sim.alive() if p is not leader]
        order = ([leader] if leader else []) + others
        return order[index % len(order)]

    def _sub(self, index: int) -> Any:
        subs = list(self.sim.submissions.values())
        return subs[index % len(subs)]

    def _accepted(self, index: int) -> Any:
        """A submission the client was told exists (it may cancel or acknowledge it)."""
        subs = [s for s in self.sim.submissions.values() if s.accepted]
        return subs[index % len(subs)]

    def _any_accepted(self) -> bool:
        return any(s.accepted for s in self.sim.submissions.values())

    # ----- the client -------------------------------------------------------------------------
    @rule(
        kind=st.sampled_from(KINDS),
        gpus=st.integers(1, 8),
        seconds=st.sampled_from((1, 3, 10)),
        succeed=st.booleans(),
        finish=st.sampled_from([a.value for a in OnFinishAction]),
    )
    def submit(self, kind: str, gpus: int, seconds: int, succeed: bool, finish: str) -> None:
        self.count += 1
        spec = task(self.count, kind, gpus=gpus, seconds=seconds, succeed=succeed, finish=finish)
        self.sim.submit(spec)

    @precondition(lambda self: self.sim.submissions)
    @rule(index=st.integers(0, 50))
    def submit_again(self, index: int) -> None:
        sub = self._sub(index)
        if not sub.ack_requested:
            self.sim.submit(sub.spec)

    @precondition(lambda self: self._any_accepted())
    @rule(index=st.integers(0, 50))
    def cancel(self, index: int) -> None:
        self.sim.cancel(self._accepted(index))

    @precondition(lambda self: self._any_accepted())
    @rule(index=st.integers(0, 50))
    def acknowledge(self, index: int) -> None:
        self.sim.acknowledge(self._accepted(index))

    # ----- the dispatchers' work --------------------------------------------------------------
    @rule(process=st.integers(0, 3))
    def run_once(self, process: int) -> None:
        """A turn of a dispatch loop: the leader's, or a deposed leader's still running
        (followers never start theirs)."""
        looping = [p for p in self.sim.alive() if p.led]
        if looping:
            leader = self.sim.leader()
            looping.sort(key=lambda p: p is not leader)
            self.sim.run_once(looping[process % len(looping)])

    @precondition(lambda self: any(p.runner.pending for p in self.sim.alive()))
    @rule(process=st.integers(0, 3), index=st.integers(0, 20))
    def run_task(self, process: int, index: int) -> None:
        busy = [p for p in self.sim.alive() if p.runner.pending]
        self.sim.run_task(busy[process % len(busy)], index)

    @precondition(lambda self: any(p.cache.events for p in self.sim.alive()))
    @rule(process=st.integers(0, 3), index=st.integers(0, 20))
    def deliver_event(self, process: int, index: int) -> None:
        """The next event of some object (events of different objects interleave)."""
        busy = [p for p in self.sim.alive() if p.cache.events]
        cache = busy[process % len(busy)].cache
        heads = cache.heads()
        cache.deliver(heads[index % len(heads)])

    @precondition(lambda self: any(p.cache.events for p in self.sim.alive()))
    @rule(process=st.integers(0, 3), index=st.integers(0, 20), duplicate=st.booleans())
    def lose_or_repeat_event(self, process: int, index: int, duplicate: bool) -> None:
        busy = [p for p in self.sim.alive() if p.cache.events]
        cache = busy[process % len(busy)].cache
        position = index % len(cache.events)
        if duplicate:
            cache.duplicate(position)
        else:
            cache.drop(position)

    @rule(seconds=st.sampled_from((0.1, 0.5, 1.0, 3.0, 10.0, 40.0)))
    def time_passes(self, seconds: float) -> None:
        self.sim.advance(seconds)

    # ----- faults -----------------------------------------------------------------------------
    @rule(
        cluster=st.sampled_from(CLUSTERS),
        verb=st.sampled_from(VERBS),
        fault=st.sampled_from(list(Fault)),
    )
    def cluster_fault(self, cluster: str, verb: str, fault: Fault) -> None:
        self.sim.world.clusters[cluster].arm(verb, fault)

    @rule(fault=st.sampled_from(list(StoreFault)))
    def store_fault(self, fault: StoreFault) -> None:
        self.sim.world.store.arm(fault)

    @precondition(lambda self: self.sim.submissions)
    @rule(index=st.integers(0, 50))
    def concurrent_writer(self, index: int) -> None:
        self.sim.world.store.touch(self._sub(index).job_id)

    @rule(cluster=st.sampled_from(CLUSTERS), reachable=st.booleans())
    def reachability(self, cluster: str, reachable: bool) -> None:
        self.sim.set_reachable(cluster, reachable)

    @precondition(lambda self: self.sim.world.pods())
    @rule(index=st.integers(0, 50))
    def pod_deleted_behind_our_back(self, index: int) -> None:
        pods = self.sim.world.pods()
        cluster, pod = pods[index % len(pods)]
        self.sim.world.clusters[cluster].remove(pod)

    @rule(blocked=st.booleans())
    def leader_renewals(self, blocked: bool) -> None:
        """The leader's renewals fail (it will lose its fence, then the Lease) or work."""
        leader = self.sim.leader()
        if leader is None:
            return
        if blocked:
            self.sim.world.renewal_blocked.add(leader.name)
        else:
            self.sim.world.renewal_blocked.discard(leader.name)

    @rule(process=st.integers(0, 3), graceful=st.booleans())
    def crash(self, process: int, graceful: bool) -> None:
        self.sim.crash(self._process(process), graceful=graceful)

    @precondition(lambda self: len(self.sim.alive()) < 3)
    @rule()
    def standby_replica(self) -> None:
        self.sim.start_process()

    # ----- judging ----------------------------------------------------------------------------
    @invariant()
    def the_world_is_consistent(self) -> None:
        self.sim.check()

    def teardown(self) -> None:
        if self.sim.failed:
            return
        self.sim.settle()
        self.sim.check_final()


_EXAMPLES = int(os.environ.get("KD_SIM_EXAMPLES", "150"))
_STEPS = int(os.environ.get("KD_SIM_STEPS", "80"))
_BASE = settings(
    max_examples=_EXAMPLES,
    stateful_step_count=_STEPS,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class TestFixedSeed(DispatcherSimulation.TestCase):  # type: ignore[misc,valid-type]
    """The same schedules on every run: CI's regression net."""

    settings = settings(_BASE, derandomize=True)


class TestRandomSeed(DispatcherSimulation.TestCase):  # type: ignore[misc,valid-type]
    """New schedules each run: a failure prints the blob that replays it."""

    settings = settings(_BASE, derandomize=False, max_examples=max(1, _EXAMPLES // 2))
