"""The simulated world behaves like the clusters, store and Lease it stands in for.

The simulation's verdicts are only as good as its world: these tests pin down that the
fake API servers refuse what real ones refuse, that pods run through their stages in fake
time as KWOK's do on the test stack, that each fault does exactly what it says, and that the
per-process cache sees the world the way the real ``ClusterCache`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from dispatcher.core import Health, Placement, build_pod, parse_task_spec, route
from dispatcher.dispatching.records import Fence
from dispatcher.errors import (
    ApiError,
    ClusterUnavailable,
    ErrorKind,
    Fenced,
    StaleRecord,
    StoreError,
)
from tests.simulation.cache import FakeCache
from tests.simulation.store import StoreFault, record_attempts
from tests.simulation.world import (
    CREATE_ERROR,
    EXIT_CODE,
    FAIL_AFTER,
    NEVER_START,
    RELIST_DELAY,
    SUCCEED_AFTER,
    Fault,
    ManualRunner,
    World,
)

NS = "dispatch"


def manifest(
    world: World,
    cluster: str,
    *,
    job_id: str = "j1",
    attempt: int = 0,
    gpus: int = 0,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The pod the dispatcher would build for a task placed on ``cluster``."""
    fields: dict[str, Any] = {
        "image": "busybox:1.36",
        "name": "t",
        "annotations": annotations or {},
        "container_resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
    }
    if gpus:
        fields["container_resources"]["limits"] = {"nvidia.com/gpu": str(gpus)}
    spec = parse_task_spec(fields)
    info = world.clusters[cluster].info
    return build_pod(
        spec,
        Placement(cluster, info.pod_defaults),
        job_id=job_id,
        attempt=attempt,
        submitted_at=datetime.fromtimestamp(world.clock(), UTC),
    )


def record_for(pod: dict[str, Any], cluster: str) -> dict[str, Any]:
    labels = pod["metadata"]["labels"]
    return {
        "id": labels["kube-dispatcher.dev/job-id"],
        "spec": {"image": "busybox:1.36"},
        "state": "launching",
        "attempt": {"cluster": cluster, "pod": pod["metadata"]["name"], "number": 0},
    }


def leader_world() -> World:
    world = World()
    world.try_acquire("p1")
    return world


def create(world: World, cluster: str, pod: dict[str, Any], by: str = "p1") -> dict[str, Any]:
    """Create ``pod`` the proper way: its record first, by the leader."""
    fence = world.fence_for(by)
    assert fence is not None
    world.store.create(record_for(pod, cluster), fence)
    return world.clusters[cluster].api_create(by, NS, pod)


def phases(cache: FakeCache) -> list[tuple[str, str | None]]:
    """Deliver every event; (type, phase) of each pod event."""
    seen: list[tuple[str, str | None]] = []
    cache.add_listener(
        lambda _c, kind, event_type, obj: (
            seen.append((event_type, (obj or {}).get("status", {}).get("phase")))
            if kind == "pod"
            else None
        )
    )
    while cache.events:
        cache.deliver(0)
    return seen


# ----- the API server ----------------------------------------------------------------------
def test_a_second_create_of_the_same_pod_name_is_refused_with_409() -> None:
    world = leader_world()
    pod = manifest(world, "plane")
    create(world, "plane", pod)
    with pytest.raises(ApiError) as refused:
        world.clusters["plane"].api_create("p1", NS, pod)
    assert refused.value.status == 409
    assert refused.value.kind is ErrorKind.CONFLICT
    assert len(world.clusters["plane"].pods) == 1


def test_the_same_name_in_another_cluster_is_another_pod() -> None:
    world = leader_world()
    pod = manifest(world, "gpu-a100", gpus=1)
    create(world, "gpu-a100", pod)
    world.store.update(
        {**record_for(pod, "gpu-h100"), "history": [record_for(pod, "gpu-a100")["attempt"]]},
        world.store.peek("j1").version,  # type: ignore[union-attr]
        world.fence_for("p1"),  # type: ignore[arg-type]
    )
    world.clusters["gpu-h100"].api_create("p1", NS, pod)
    assert [len(c.pods) for c in world.clusters.values()] == [0, 1, 1]


def test_deleting_a_missing_pod_is_a_404_and_reading_it_is_none() -> None:
    world = leader_world()
    with pytest.raises(ApiError) as missing:
        world.clusters["plane"].api_delete("p1", NS, "nope")
    assert missing.value.status == 404
    assert world.clusters["plane"].api_read("p1", NS, "nope") is None


# ----- scheduler and kubelet -----------------------------------------------------------------
def test_a_pod_binds_runs_and_succeeds_in_fake_time() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    create(world, "plane", manifest(world, "plane", annotations={SUCCEED_AFTER: "3s"}))
    pod = next(iter(world.clusters["plane"].pods.values()))
    world.advance(0.05)
    assert pod.phase == "Pending"
    assert pod.bound_at is None
    world.advance(0.1)
    assert pod.obj["spec"]["nodeName"].startswith("plane-")
    world.advance(0.5)
    assert pod.phase == "Running"
    world.advance(2.9)
    assert pod.phase == "Running"
    world.advance(0.2)
    assert pod.phase == "Succeeded"
    terminated = pod.obj["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert phases(cache) == [
        ("ADDED", "Pending"),
        ("MODIFIED", "Pending"),
        ("MODIFIED", "Running"),
        ("MODIFIED", "Succeeded"),
    ]


def test_one_long_step_of_time_still_goes_through_every_stage() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    create(world, "plane", manifest(world, "plane", annotations={SUCCEED_AFTER: "1s"}))
    world.advance(60)
    assert [p for _, p in phases(cache)] == ["Pending", "Pending", "Running", "Succeeded"]


def test_fail_after_ends_with_the_exit_code_asked_for() -> None:
    world = leader_world()
    create(
        world, "plane", manifest(world, "plane", annotations={FAIL_AFTER: "2s", EXIT_CODE: "137"})
    )
    world.advance(10)
    pod = next(iter(world.clusters["plane"].pods.values()))
    assert pod.phase == "Failed"
    assert pod.obj["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


def test_never_start_keeps_the_container_waiting_with_its_reason() -> None:
    world = leader_world()
    create(world, "plane", manifest(world, "plane", annotations={NEVER_START: "ImagePullBackOff"}))
    world.advance(100)
    pod = next(iter(world.clusters["plane"].pods.values()))
    assert pod.phase == "Pending"
    waiting = pod.obj["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ImagePullBackOff"


def test_a_pod_without_annotations_runs_until_deleted() -> None:
    world = leader_world()
    create(world, "plane", manifest(world, "plane"))
    world.advance(3600)
    pod = next(iter(world.clusters["plane"].pods.values()))
    assert pod.phase == "Running"
    world.clusters["plane"].api_delete("p1", NS, pod.name)
    assert world.clusters["plane"].pods == {}


def test_a_pod_that_fits_nowhere_waits_unschedulable_until_a_gpu_frees_up() -> None:
    world = leader_world()
    a100 = world.clusters["gpu-a100"]
    for index in range(4):  # every GPU of the cluster
        create(
            world,
            "gpu-a100",
            manifest(
                world, "gpu-a100", job_id=f"j{index}", gpus=8, annotations={SUCCEED_AFTER: "5s"}
            ),
        )
    create(world, "gpu-a100", manifest(world, "gpu-a100", job_id="late", gpus=8))
    world.advance(1)
    late = next(p for p in a100.pods.values() if p.job_id == "late")
    assert late.bound_at is None
    assert late.obj["status"]["conditions"][0]["reason"] == "Unschedulable"
    world.advance(5.5)  # the first four finish at 5.6 s, "late" runs 0.5 s later
    assert late.phase == "Running"


def test_gpu_pods_bind_only_on_tolerated_gpu_nodes() -> None:
    world = leader_world()
    create(world, "gpu-a100", manifest(world, "gpu-a100", job_id="gpu", gpus=2))
    plain = manifest(world, "gpu-a100", job_id="cpu")
    plain["spec"].pop("tolerations", None)
    create(world, "gpu-a100", plain)
    world.advance(1)
    pods = {p.job_id: p for p in world.clusters["gpu-a100"].pods.values()}
    assert pods["gpu"].obj["spec"]["nodeName"].startswith("a100-")
    assert pods["cpu"].bound_at is None  # every node is tainted for GPUs


# ----- faults ---------------------------------------------------------------------------------
def test_a_lost_response_raises_after_the_pod_was_created() -> None:
    world = leader_world()
    world.clusters["plane"].arm("create", Fault.LOST_RESPONSE)
    with pytest.raises(ClusterUnavailable):
        create(world, "plane", manifest(world, "plane"))
    assert len(world.clusters["plane"].pods) == 1


def test_a_conflict_after_means_the_pod_exists_and_the_answer_was_409() -> None:
    world = leader_world()
    world.clusters["plane"].arm("create", Fault.CONFLICT_AFTER)
    with pytest.raises(ApiError) as refused:
        create(world, "plane", manifest(world, "plane"))
    assert refused.value.status == 409
    assert len(world.clusters["plane"].pods) == 1


@pytest.mark.parametrize(
    ("fault", "status"),
    [(Fault.SERVER_ERROR, 500), (Fault.THROTTLED, 429), (Fault.UNAVAILABLE, None)],
)
def test_failures_before_the_request_leave_nothing_created(
    fault: Fault, status: int | None
) -> None:
    world = leader_world()
    world.clusters["plane"].arm("create", fault)
    with pytest.raises((ApiError, ClusterUnavailable)) as failed:
        create(world, "plane", manifest(world, "plane"))
    assert getattr(failed.value, "status", None) == status
    assert world.clusters["plane"].pods == {}
    # The fault was used up: the next try goes through.
    world.clusters["plane"].api_create("p1", NS, manifest(world, "plane"))
    assert len(world.clusters["plane"].pods) == 1


def test_429_says_how_long_to_wait_and_is_throttling_not_an_outage() -> None:
    world = leader_world()
    world.clusters["plane"].arm("any", Fault.THROTTLED)
    with pytest.raises(ApiError) as throttled:
        world.clusters["plane"].api_read("p1", NS, "x")
    assert throttled.value.kind is ErrorKind.THROTTLED
    assert throttled.value.retry_after == 3


def test_a_manifest_the_cluster_refuses_is_refused_every_time_with_422() -> None:
    world = leader_world()
    pod = manifest(world, "plane", annotations={CREATE_ERROR: "422"})
    for _ in range(2):
        with pytest.raises(ApiError) as refused:
            create(world, "plane", pod) if _ == 0 else world.clusters["plane"].api_create(
                "p1", NS, pod
            )
        assert refused.value.status == 422
        assert refused.value.kind is ErrorKind.PERMANENT
        assert "spec.containers[0].image: Required value" in str(refused.value)
    assert world.clusters["plane"].pods == {}
    assert world.permanently_refused == {"j1"}


def test_a_fault_armed_for_one_job_leaves_other_jobs_alone() -> None:
    world = leader_world()
    world.clusters["plane"].arm("create", Fault.SERVER_ERROR, job_id="j2")
    create(world, "plane", manifest(world, "plane", job_id="j1"))
    with pytest.raises(ApiError):
        create(world, "plane", manifest(world, "plane", job_id="j2"))


def test_an_unreachable_cluster_answers_nothing_and_its_pods_run_on() -> None:
    world = leader_world()
    create(world, "plane", manifest(world, "plane", annotations={SUCCEED_AFTER: "2s"}))
    world.set_reachable("plane", False)
    calls: list[Callable[[], object]] = [
        lambda: world.clusters["plane"].api_read("p1", NS, "x"),
        lambda: world.clusters["plane"].api_delete("p1", NS, "x"),
        lambda: world.clusters["plane"].api_create("p1", NS, manifest(world, "plane", job_id="j2")),
    ]
    for call in calls:
        with pytest.raises(ClusterUnavailable):
            call()
    world.advance(5)
    assert next(iter(world.clusters["plane"].pods.values())).phase == "Succeeded"


# ----- the cache ------------------------------------------------------------------------------
def test_the_cache_lists_at_start_and_reports_the_list_as_events() -> None:
    world = leader_world()
    create(world, "plane", manifest(world, "plane"))
    cache = FakeCache(world, "p2")
    assert cache.synced("plane")
    assert [p["metadata"]["name"] for p in cache.managed_pods("plane")] == [
        "t-" + _hash("j1") + "-0"
    ]
    plane = [(e.type, e.relisted) for e in cache.events if e.cluster == "plane"]
    assert plane == [("ADDED", True), ("first", False)]


def test_a_cluster_unreachable_at_start_is_unsynced_and_down_until_it_answers() -> None:
    world = leader_world()
    create(world, "plane", manifest(world, "plane"))
    world.set_reachable("plane", False)
    cache = FakeCache(world, "p2")
    assert not cache.synced("plane")
    assert cache.health("plane") is Health.DOWN
    assert cache.snapshot().cluster("plane").health is Health.DOWN  # type: ignore[union-attr]
    world.set_reachable("plane", True)
    assert cache.synced("plane")
    assert [e.describe().split(" (")[0] for e in cache.events if e.cluster == "plane"] == [
        "plane ADDED dispatch/t-" + _hash("j1") + "-0",
        "plane listed first",
        "plane health up",
    ]


def test_while_unreachable_no_event_arrives_and_the_relist_tells_what_changed() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    create(world, "plane", manifest(world, "plane", job_id="j1", annotations={SUCCEED_AFTER: "1s"}))
    create(world, "plane", manifest(world, "plane", job_id="j2"))
    while cache.events:
        cache.deliver(0)
    world.set_reachable("plane", False)
    assert [e.describe() for e in cache.events] == ["plane health down"]
    cache.deliver(0)
    assert cache.health("plane") is Health.DOWN
    world.advance(5)
    gone = next(p for p in world.clusters["plane"].pods.values() if p.job_id == "j2")
    world.clusters["plane"].remove(gone)
    assert cache.events == []
    world.set_reachable("plane", True)
    assert [(e.type, (e.obj or {}).get("status", {}).get("phase")) for e in cache.events] == [
        ("MODIFIED", "Succeeded"),
        ("DELETED", "Pending"),  # the last state this cache had seen
        ("relist", None),
        ("up", None),
    ]


def test_a_dropped_event_is_healed_by_the_relist_that_follows() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    while cache.events:  # the first lists' ends
        cache.deliver(0)
    create(world, "plane", manifest(world, "plane", annotations={SUCCEED_AFTER: "10s"}))
    cache.drop(0)  # the ADDED
    assert cache.managed_pods("plane") == []
    world.advance(RELIST_DELAY + 0.01)
    assert [p["status"]["phase"] for p in cache.managed_pods("plane")] == ["Running"]
    assert [e.type for e in cache.events] == ["ADDED", "relist"]


def test_events_of_one_pod_stay_in_order_while_different_pods_interleave() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    while cache.events:  # the first lists' ends
        cache.deliver(0)
    create(world, "plane", manifest(world, "plane", job_id="j1"))
    create(world, "plane", manifest(world, "plane", job_id="j2"))
    world.advance(1)
    names = [e.key[2][-13:-2] for e in cache.events]
    assert len(names) == 6
    heads = cache.heads()
    assert [cache.events[i].key for i in heads] == [cache.events[0].key, cache.events[1].key]
    second = cache.deliver(heads[1])
    assert second.key != cache.events[0].key or second.type == "ADDED"


def test_a_duplicated_event_arrives_twice() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    while cache.events:  # the first lists' ends
        cache.deliver(0)
    create(world, "plane", manifest(world, "plane"))
    cache.duplicate(0)
    assert phases(cache) == [("ADDED", "Pending"), ("ADDED", "Pending")]


def test_an_assumed_pod_takes_its_gpus_in_the_snapshot_until_seen_bound() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    pod = manifest(world, "gpu-h100", gpus=8)
    free = _free_gpus(cache, "gpu-h100")
    cache.assume("gpu-h100", pod)
    assert _free_gpus(cache, "gpu-h100") == free - 8
    create(world, "gpu-h100", pod)
    world.advance(1)
    while cache.events:
        cache.deliver(0)
    assert cache.assumed("gpu-h100") == []
    assert _free_gpus(cache, "gpu-h100") == free - 8  # now counted as the bound pod it is


def test_routing_on_the_cache_snapshot_picks_the_cluster_with_the_gpu_model() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    spec = parse_task_spec(
        {
            "image": "busybox:1.36",
            "container_resources": {"limits": {"nvidia.com/gpu": "1"}},
            "requirements": {"gpu_model": "h100"},
        }
    )
    assert route(spec, cache.snapshot()).cluster == "gpu-h100"


def _free_gpus(cache: FakeCache, cluster: str) -> int:
    state = cache.snapshot().cluster(cluster)
    assert state is not None
    return sum(s.total_free.get("nvidia.com/gpu", 0) for s in state.shapes)


def _hash(job_id: str) -> str:
    import hashlib

    return hashlib.sha256(job_id.encode()).hexdigest()[:10]


# ----- lease, fencing and the store -----------------------------------------------------------
def test_a_leader_that_cannot_renew_loses_its_fence_before_anyone_can_take_over() -> None:
    world = leader_world()
    world.renewal_blocked.add("p1")
    world.advance(world.renew_deadline - 0.1)
    assert world.fence_for("p1") is not None
    world.advance(0.2)
    assert world.fence_for("p1") is None
    assert world.holds_lease("p1")  # the Lease itself has not expired yet
    assert not world.try_acquire("p2")
    world.advance(world.lease_duration - world.renew_deadline)
    assert world.try_acquire("p2")
    assert world.fence_for("p2") == Fence("p2", 2)


def test_a_write_of_an_older_term_is_fenced() -> None:
    world = leader_world()
    old = world.fence_for("p1")
    assert old is not None
    world.store.create({"id": "j1", "spec": {}, "state": "queued"}, old)
    world.release("p1")
    world.try_acquire("p2")
    with pytest.raises(Fenced):
        world.store.update({"id": "j1", "spec": {}, "state": "running"}, "1", old)
    assert [w.op for w in world.store.history] == ["create"]


def test_store_faults_before_and_after_the_write() -> None:
    world = leader_world()
    fence = world.fence_for("p1")
    assert fence is not None
    world.store.arm(StoreFault.ERROR_BEFORE)
    with pytest.raises(StoreError):
        world.store.create({"id": "j1", "spec": {}}, fence)
    assert world.store.peek("j1") is None
    world.store.arm(StoreFault.ERROR_AFTER)
    with pytest.raises(StoreError):
        world.store.create({"id": "j1", "spec": {}}, fence)
    assert world.store.peek("j1") is not None
    assert [(w.op, w.answered) for w in world.store.history] == [("create", False)]


def test_a_concurrent_writer_makes_the_next_update_stale() -> None:
    world = leader_world()
    fence = world.fence_for("p1")
    assert fence is not None
    version = world.store.create({"id": "j1", "spec": {}, "state": "queued"}, fence)
    world.store.arm(StoreFault.STALE)
    with pytest.raises(StaleRecord):
        world.store.update({"id": "j1", "spec": {}, "state": "running"}, version, fence)
    stored = world.store.peek("j1")
    assert stored is not None
    assert stored.record["state"] == "queued"
    assert [w.op for w in world.store.history] == ["create", "touch"]


def test_record_attempts_finds_every_attempt_a_record_names() -> None:
    record = {
        "id": "j",
        "attempt": {"cluster": "a", "pod": "p-1"},
        "history": [{"cluster": "b", "pod": "p-0"}],
    }
    assert record_attempts(record) == {("a", "p-1"), ("b", "p-0")}


# ----- what the world holds against a create --------------------------------------------------
def test_a_pod_created_without_its_record_is_a_violation() -> None:
    world = leader_world()
    world.clusters["plane"].api_create("p1", NS, manifest(world, "plane"))
    assert len(world.violations) == 1
    assert "has no record" in world.violations[0]


def test_a_pod_whose_record_names_another_attempt_is_a_violation() -> None:
    world = leader_world()
    pod = manifest(world, "plane")
    create(world, "plane", pod)
    world.clusters["plane"].api_create("p1", NS, manifest(world, "plane", attempt=1))
    assert ["does not name this attempt" in v for v in world.violations] == [True]


def test_a_pod_created_by_a_process_without_the_lease_is_a_violation() -> None:
    world = leader_world()
    pod = manifest(world, "plane")
    world.store.create(record_for(pod, "plane"), world.fence_for("p1"))  # type: ignore[arg-type]
    world.clusters["plane"].api_create("p2", NS, pod)
    assert ["without holding the lease" in v for v in world.violations] == [True]


def test_a_create_sent_again_after_a_permanent_refusal_is_a_violation() -> None:
    world = leader_world()
    pod = manifest(world, "plane", annotations={CREATE_ERROR: "422"})
    with pytest.raises(ApiError):
        create(world, "plane", pod)
    assert world.violations == []
    with pytest.raises(ApiError):
        world.clusters["gpu-a100"].api_create("p1", NS, pod)
    assert ["refused for good" in v for v in world.violations] == [True]


# ----- the runner -----------------------------------------------------------------------------
def test_the_manual_runner_runs_what_the_test_picks_and_reports_what_raised() -> None:
    world = World()
    runner = ManualRunner(world, "p1")
    ran: list[str] = []
    runner.submit(lambda: ran.append("a"))
    runner.submit(lambda: ran.append("b"))
    runner.submit(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    runner.run(1)
    assert ran == ["b"]
    runner.run(1)
    assert "RuntimeError('boom')" in world.violations[0]
    runner.run(0)
    assert ran == ["b", "a"]


def test_health_events_cannot_be_lost_and_stay_in_order() -> None:
    world = leader_world()
    cache = FakeCache(world, "p1")
    seen: list[str] = []
    cache.add_listener(
        lambda c, kind, event_type, _o: (
            seen.append(f"{c} {event_type}") if kind == "health" else None
        )
    )
    world.set_reachable("plane", False)
    world.set_reachable("plane", True)
    cache.drop(len(cache.events) - 1)  # "up": the cache emits it itself, after "down"
    assert seen == ["plane down", "plane up"][: len(seen)]
    while cache.events:
        cache.drop(0)
    assert seen == ["plane down", "plane up"]
    assert cache.health("plane") is Health.UP
