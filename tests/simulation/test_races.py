"""The races of issue 11, each as one fixed schedule in the simulated world.

Each test replays a schedule that broke an earlier dispatcher (the issue's findings on the
stack and in the code) and judges it from the world's side: the pods the clusters really
got, the record the store really holds. They are the short, named companions of the
hypothesis state machine in ``test_simulation``: when one fails, its name says which
promise broke.
"""

from __future__ import annotations

from typing import Any

from dispatcher.core import TaskSpec, parse_task_spec
from tests.simulation.harness import Simulation
from tests.simulation.store import StoreFault
from tests.simulation.world import CREATE_ERROR, FAIL_AFTER, SUCCEED_AFTER, Fault


def task(
    key: str, *, gpus: int = 0, model: str | None = None, seconds: int = 60, **extra: Any
) -> TaskSpec:
    fields: dict[str, Any] = {
        "image": "busybox:1.36",
        "name": key,
        "idempotency_key": key,
        "annotations": {SUCCEED_AFTER: f"{seconds}s", **extra.pop("annotations", {})},
        "container_resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        **extra,
    }
    if gpus:
        fields["container_resources"]["limits"] = {"nvidia.com/gpu": str(gpus)}
    if model:
        fields["requirements"] = {"gpu_model": model}
    return parse_task_spec(fields)


def placed_cluster(sim: Simulation, job_id: str) -> str:
    """The cluster the job's record names for its current attempt."""
    stored = sim.world.store.peek(job_id)
    assert stored is not None
    attempt = stored.record.get("attempt") or {}
    cluster = attempt.get("cluster")
    assert isinstance(cluster, str), f"no attempt recorded: {stored.record}"
    return cluster


def test_a_cancel_racing_the_launch_leaves_no_pod_behind() -> None:
    sim = Simulation()
    sub = sim.submit(task("race-cancel", gpus=1, model="a100"))
    sim.run_once()  # routed: the launch is on its way
    sim.check()
    sim.cancel(sub)  # answered before the create went out
    sim.check()
    sim.run_tasks(newest_first=True)  # the cancel is handled first, then the launch
    sim.deliver_events()
    sim.run_for(10)
    assert sim.state(sub.job_id) == "cancelled"
    assert sim.world.live_pods_by_job().get(sub.job_id) is None
    sim.settle()
    sim.check_final()


def test_a_create_failing_after_a_cancel_does_not_launch_the_job_again() -> None:
    sim = Simulation()
    sub = sim.submit(task("race-fail", gpus=1, model="a100"))
    sim.run_once()
    sim.world.clusters["gpu-a100"].arm("create", Fault.SERVER_ERROR, job_id=sub.job_id)
    sim.cancel(sub)
    sim.run_tasks(newest_first=True)
    sim.run_for(30)
    assert sim.pods_created(sub.job_id) == []
    assert sim.state(sub.job_id) == "cancelled"
    sim.settle()
    sim.check_final()


def test_an_ambiguous_create_is_resolved_by_reading_the_pod_never_by_launching_elsewhere() -> None:
    sim = Simulation()
    sub = sim.submit(task("race-ambiguous", gpus=1, seconds=20))  # fits either GPU cluster
    sim.run_once()
    sim.check()
    for cluster in ("gpu-a100", "gpu-h100"):
        sim.world.clusters[cluster].arm("create", Fault.LOST_RESPONSE, job_id=sub.job_id)
    sim.run_tasks()  # the create lands; its answer is lost
    first = sim.pods_created(sub.job_id)
    assert len(first) == 1
    cluster = first[0].split("@")[1]
    sim.world.clusters["gpu-a100" if cluster == "gpu-h100" else "gpu-h100"].faults.clear()
    sim.set_reachable(cluster, False)  # and now nobody can tell whether it exists
    sim.check()
    sim.run_for(60)
    sim.set_reachable(cluster, True)
    sim.run_for(40)
    assert sim.pods_created(sub.job_id) == first
    assert sim.state(sub.job_id) == "succeeded"
    sim.settle()
    sim.check_final()


def test_a_create_answered_409_adopts_the_pod_it_finds() -> None:
    sim = Simulation()
    sub = sim.submit(task("race-409", seconds=5))
    sim.run_once()
    sim.world.clusters["plane"].arm("create", Fault.CONFLICT_AFTER, job_id=sub.job_id)
    sim.run_for(20)
    assert len(sim.pods_created(sub.job_id)) == 1
    assert sim.state(sub.job_id) == "succeeded"
    sim.settle()
    sim.check_final()


def test_a_permanent_422_fails_the_job_at_once_with_the_api_servers_words() -> None:
    sim = Simulation()
    sub = sim.submit(task("race-422", annotations={CREATE_ERROR: "422"}))
    sim.run_for(30)
    assert len(sim.world.refused_creates) == 1
    assert sim.state(sub.job_id) == "failed"
    stored = sim.world.store.peek(sub.job_id)
    assert stored is not None
    assert "spec.containers[0].image: Required value" in str(stored.record.get("message"))
    sim.settle()
    sim.check_final()


def test_an_authorizer_403_on_create_is_retried_not_taken_for_a_refused_pod() -> None:
    # Long campaigns: a GPU cluster's API server, just restarted, denied a create or two
    # before its RBAC caches had synced; the job failed as launch-refused. Nothing about
    # the pod was refused: this cluster's authorizer said no, for now.
    sim = Simulation()
    sub = sim.submit(task("race-403", seconds=5))
    sim.run_once()
    sim.world.clusters["plane"].arm("create", Fault.FORBIDDEN, job_id=sub.job_id)
    sim.run_for(60)
    assert sim.state(sub.job_id) == "succeeded"
    assert len(sim.pods_created(sub.job_id)) == 1
    sim.settle()
    sim.check_final()


def test_a_running_job_on_an_unreachable_cluster_waits_and_never_runs_twice() -> None:
    sim = Simulation()
    sub = sim.submit(task("race-partition", gpus=1, seconds=300))  # fits either GPU cluster
    sim.run_for(5)
    cluster = placed_cluster(sim, sub.job_id)
    (pod,) = sim.world.clusters[cluster].pods.values()
    assert pod.phase == "Running"
    sim.set_reachable(cluster, False)
    sim.run_for(200)  # far past any grace period
    assert len(sim.pods_created(sub.job_id)) == 1
    sim.set_reachable(cluster, True)
    sim.run_for(150)
    assert len(sim.pods_created(sub.job_id)) == 1
    assert sim.state(sub.job_id) == "succeeded"
    sim.settle()
    sim.check_final()


def test_under_a_relaunch_policy_the_overlap_is_counted_and_the_old_pod_deleted_on_return() -> None:
    from dispatcher.settings import UnreachablePolicy  # (not in today's settings)

    relaunch = UnreachablePolicy(action="relaunch", relaunch_after_seconds=20)
    sim = Simulation(
        unreachable=dict.fromkeys(("gpu-a100", "gpu-h100"), relaunch), relaunch_allowed=True
    )
    sub = sim.submit(task("relaunch", gpus=1, seconds=300))
    sim.run_for(5)
    first = placed_cluster(sim, sub.job_id)
    sim.set_reachable(first, False)
    sim.run_for(40)
    assert [p.split("@")[1] for p in sim.pods_created(sub.job_id)] == [
        first,
        "gpu-h100" if first == "gpu-a100" else "gpu-a100",
    ]
    assert sim.overlaps == {sub.job_id}  # counted, not silent
    sim.set_reachable(first, True)
    sim.run_for(10)
    assert [c for c, _ in sim.world.live_pods_by_job()[sub.job_id]] != [first]
    assert len(sim.world.live_pods_by_job()[sub.job_id]) == 1
    sim.settle()
    sim.check_final()


def test_a_job_whose_pod_finished_and_went_while_the_dispatcher_was_down_is_not_run_again() -> None:
    sim = Simulation()
    sub = sim.submit(task("race-restart", seconds=2))
    sim.run_for(2)
    assert len(sim.pods_created(sub.job_id)) == 1
    leader = sim.leader()
    assert leader is not None
    sim.crash(leader, replace=False)  # kill -9 while the task runs
    sim.advance(5)  # it succeeds meanwhile...
    (pod,) = sim.world.clusters["plane"].pods.values()
    sim.world.clusters["plane"].remove(pod)  # ...and someone cleans it up
    sim.start_process()
    sim.advance(20)  # the old Lease expires; the replacement leads and reattaches
    sim.run_for(30)
    assert len(sim.pods_created(sub.job_id)) == 1
    sim.settle()
    sim.check_final()


def test_a_lost_record_write_is_not_a_lie_after_a_restart() -> None:
    sim = Simulation()
    sub = sim.submit(task("race-save", seconds=2))
    sim.run_for(2)
    sim.world.store.arm(StoreFault.ERROR_BEFORE, job_id=sub.job_id)  # the finishing write
    sim.run_for(5)
    leader = sim.leader()
    assert leader is not None
    sim.crash(leader)
    sim.advance(20)
    sim.run_for(30)
    assert len(sim.pods_created(sub.job_id)) == 1
    assert sim.state(sub.job_id) == "succeeded"
    sim.settle()
    sim.check_final()


def test_a_deposed_leader_creates_no_pod() -> None:
    sim = Simulation()
    sim.start_process()  # a standby replica
    sub = sim.submit(task("race-deposed", seconds=5))
    old = sim.leader()
    assert old is not None
    sim.run_once(old)  # the launch is on its way...
    sim.world.renewal_blocked.add(old.name)  # ...when its renewals start failing
    sim.advance(sim.world.lease_duration + 1)
    new = sim.leader()
    assert new is not None
    assert new is not old
    sim.run_tasks()  # the deposed leader's work runs late
    sim.check()
    sim.settle()
    sim.check_final()
    assert len(sim.pods_created(sub.job_id)) == 1


def test_a_pod_deleted_before_the_cache_ever_saw_it_still_ends_its_job() -> None:
    sim = Simulation()
    sub = sim.submit(task("unseen", seconds=5))
    sim.run_once()
    sim.run_tasks()  # recorded, created, answered: the job is pending
    (pod,) = sim.world.clusters["plane"].pods.values()
    sim.world.clusters["plane"].remove(pod)  # deleted before any watch event arrived...
    sim.set_reachable("plane", False)  # ...and the watch broke: the relist finds nothing
    sim.set_reachable("plane", True)
    sim.run_for(180)
    assert sim.state(sub.job_id) in ("failed", "succeeded")
    assert len(sim.pods_created(sub.job_id)) == 1
    sim.settle()
    sim.check_final()


def test_a_pod_that_came_and_went_unwatched_is_read_when_the_informer_lists_again() -> None:
    # Fault campaign seed 406888241 on the stack: a pod created just after gpu-a100's
    # apiserver came back, while the informers still waited out their backoff, finished
    # and was deleted before their watch (410 Gone) listed again. The list has no such pod
    # and the old cache never had one, so the diff says nothing: the job stayed pending.
    sim = Simulation()
    sub = sim.submit(task("unwatched", seconds=5))
    sim.run_once()
    sim.run_tasks()  # recorded, created, answered: the job is pending
    leader = sim.leader()
    assert leader is not None
    plane = sim.world.clusters["plane"]
    (pod,) = plane.pods.values()
    plane.remove(pod)
    # None of its watch events arrive; the cluster's health never changes...
    leader.cache.events = [e for e in leader.cache.events if e.kind != "pod"]
    leader.cache.relist("plane")  # ...and the relist finds nothing where nothing was known.
    sim.run_for(180)
    assert sim.state(sub.job_id) in ("failed", "succeeded")
    assert len(sim.pods_created(sub.job_id)) == 1
    sim.settle()
    sim.check_final()


def test_a_task_that_never_starts_leaves_no_live_pod_whatever_its_finish_action() -> None:
    from tests.simulation.world import NEVER_START

    for action in ("delete_pod", "delete_succeeded_pod", "keep_pod"):
        sim = Simulation()
        sub = sim.submit(
            task(
                f"never-{action.replace('_', '-')}",
                annotations={NEVER_START: "ImagePullBackOff"},
                startup_timeout_seconds=10,
                on_finish_action=action,
            )
        )
        sim.run_for(40)
        assert sim.state(sub.job_id) == "failed"
        # A Pending pod still holds its node's resources, and its kubelet may yet start
        # the task after the client was told it failed.
        assert sim.world.live_pods_by_job().get(sub.job_id) is None, action


def test_a_timer_whose_write_is_being_retried_is_not_posted_again_every_turn() -> None:
    sim = Simulation()
    sub = sim.submit(task("timer-once", gpus=1, model="a100", seconds=120))
    sim.run_for(5)
    assert sim.state(sub.job_id) == "running"
    cluster = placed_cluster(sim, sub.job_id)
    before = len(sim.world.store.history)
    # The cluster stops answering while the record store refuses the next writes: the
    # "unreachable" condition's write is retried with a backoff meanwhile.
    for _ in range(3):
        sim.world.store.arm(StoreFault.ERROR_BEFORE, job_id=sub.job_id)
    sim.set_reachable(cluster, False)
    sim.run_for(60, step=0.25)
    notes = [
        w for w in sim.world.store.history[before:] if w.job_id == sub.job_id and w.op == "update"
    ]
    # One condition, written once when a retry gets through (not once per turn it waited).
    assert len(notes) == 1, [w.record.get("conditions") if w.record else None for w in notes]
    sim.set_reachable(cluster, True)
    sim.settle()
    sim.check_final()


def test_a_new_leader_whose_cache_lags_reads_the_pod_before_calling_it_gone() -> None:
    # Found by a random hypothesis seed: the replica that takes over had not yet seen the
    # pod's watch events when it re-attached, judged the pod deleted ("node-lost"), and
    # then never cleaned up the pod, which was there all along and had failed on its own.
    sim = Simulation()
    sim.start_process()  # the standby, started before the pod exists
    sub = sim.submit(
        parse_task_spec(
            {
                "image": "busybox:1.36",
                "name": "lagging",
                "idempotency_key": "lagging",
                "on_finish_action": "delete_pod",
                "annotations": {FAIL_AFTER: "1s"},
                "container_resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            }
        )
    )
    leader = sim.leader()
    assert leader is not None
    sim.run_once(leader)
    sim.run_task(leader, 0)  # the pod is created; nobody has delivered its events yet
    sim.crash(leader, replace=False)
    sim.settle()
    stored = sim.world.store.peek(sub.job_id)
    assert stored is not None
    assert stored.record.get("failure") == "exit-code", stored.record
    sim.check_final()  # and its pod is gone, as delete_pod says


def test_a_new_leader_still_reattaching_says_retry_never_no_such_job() -> None:
    # Found by the fault campaign (seed 20261202, 15 min, at 3b12c92): the replica that had
    # just taken the Lease answered a cancel with 404 before it had read the records; the
    # client took it at its word, and the task it meant to cancel ran on.
    sim = Simulation()
    sim.start_process()  # a standby replica
    sub = sim.submit(task("reattaching", seconds=300))
    sim.run_for(3)
    old = sim.leader()
    assert old is not None
    sim.crash(old, replace=False)
    sim.advance(sim.world.lease_duration + 1)  # the standby takes the Lease...
    new = sim.leader()
    assert new is not None
    assert new is not old
    assert new.runner.pending  # ...and has not re-attached yet
    sim.cancel(sub)  # the client asks it at once
    assert not sub.cancel_requested  # "retry" (a 503), not "no such job"
    sim.run_tasks()  # re-attached
    sim.cancel(sub)
    assert sub.cancel_requested
    sim.run_for(20)
    assert sim.state(sub.job_id) == "cancelled"
    assert sim.world.live_pods_by_job().get(sub.job_id) is None
    sim.settle()
    sim.check_final()
