"""Dependency copies under races, each one fixed interleaving against an in-memory API
server that keeps resourceVersions as the real one does (``dispatching.copies``).

The real stack cannot pause the dispatcher between a sweep's list and its delete; these
schedules do, and judge from the objects the fake API server holds.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from dispatcher.core import ClusterRole, ClusterState, Snapshot, parse_task_spec
from dispatcher.core.copies import COPY_LABEL, CopyPolicy, users
from dispatcher.core.dependencies import DependencyKind
from dispatcher.core.lifecycle import State
from dispatcher.dispatching.copies import Copier
from dispatcher.dispatching.dispatcher import _ended_attempt
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.errors import ApiError
from tests.unit.factories import info

NAMESPACE = "batch"


class Objects:
    """Secrets and ConfigMaps of one cluster, with resourceVersion checks on writes;
    ``before_list`` runs when a list arrives, ``after_list`` once it has been answered
    (the interleavings under test)."""

    def __init__(self, cluster: str, versions: itertools.count[int]) -> None:
        self.cluster = cluster
        self.items: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._versions = versions
        self.before_list: Callable[[], None] | None = None
        self.after_list: Callable[[], None] | None = None

    def _conflict(self, what: str) -> ApiError:
        return ApiError(f"{what}: conflict", cluster=self.cluster, status=409)

    def _stamp(self, body: Mapping[str, Any]) -> dict[str, Any]:
        metadata = {**body["metadata"], "resourceVersion": str(next(self._versions))}
        return {**body, "metadata": metadata}

    def read_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.items.get((plural, namespace, name))

    def create_object(self, plural: str, namespace: str, body: Mapping[str, Any]) -> Any:
        key = (plural, namespace, body["metadata"]["name"])
        if key in self.items:
            raise self._conflict("create")
        self.items[key] = self._stamp(body)
        return self.items[key]

    def replace_object(self, plural: str, namespace: str, body: Mapping[str, Any]) -> Any:
        key = (plural, namespace, body["metadata"]["name"])
        current = self.items.get(key)
        if current is None:
            raise ApiError("update: not found", cluster=self.cluster, status=404)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise self._conflict("update")
        self.items[key] = self._stamp(body)
        return self.items[key]

    def delete_object(
        self, plural: str, namespace: str, name: str, resource_version: str | None = None
    ) -> bool:
        current = self.items.get((plural, namespace, name))
        if current is None:
            return False
        if resource_version and resource_version != current["metadata"]["resourceVersion"]:
            raise self._conflict("delete")
        del self.items[(plural, namespace, name)]
        return True

    def list_namespaced(self, plural: str, namespace: str, label_selector: str) -> list[Any]:
        assert label_selector == f"{COPY_LABEL}=true"
        before, self.before_list = self.before_list, None
        if before is not None:
            before()
        found = [
            o
            for (p, n, _), o in self.items.items()
            if (p, n) == (plural, namespace) and o["metadata"]["labels"].get(COPY_LABEL) == "true"
        ]
        after, self.after_list = self.after_list, None
        if after is not None:
            after()
        return found


class Clusters:
    """The ``Cache`` the copier needs: a snapshot with a plane and gpu-a100, and their
    connections."""

    def __init__(self) -> None:
        versions = itertools.count(100)
        self.plane = Objects("plane", versions)
        self.gpu = Objects("gpu-a100", versions)
        policy = CopyPolicy(from_plane={DependencyKind.SECRET: ("*",)})
        self._snapshot = Snapshot.of(
            (
                ClusterState.build(info("plane", role=ClusterRole.IN_PLANE, namespace=NAMESPACE)),
                ClusterState.build(
                    dataclasses.replace(info("gpu-a100", namespace=NAMESPACE), copies=policy)
                ),
            )
        )

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def connection(self, cluster: str) -> Objects:
        return {"plane": self.plane, "gpu-a100": self.gpu}[cluster]


def _job(job_id: str) -> tuple[Job, Attempt]:
    spec = parse_task_spec(
        {"name": job_id, "image": "busybox:1.36", "image_pull_secrets": ["regcred"]}
    )
    attempt = Attempt(1, "gpu-a100", f"{job_id}-pod", NAMESPACE, 0.0)
    submitted = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    return Job(job_id, spec, submitted, state=State.LAUNCHING, attempt=attempt), attempt


def _world() -> tuple[Clusters, Copier]:
    clusters = Clusters()
    clusters.plane.create_object(
        "secrets",
        NAMESPACE,
        {"metadata": {"name": "regcred", "labels": {}}, "data": {"k": "dg=="}},
    )
    return clusters, Copier(clusters)  # type: ignore[arg-type]


def _regcred(clusters: Clusters) -> dict[str, Any] | None:
    return clusters.gpu.read_object("secrets", NAMESPACE, "regcred")


def test_a_job_joining_a_copy_as_a_sweep_starts_keeps_it() -> None:
    clusters, copier = _world()
    old, old_attempt = _job("j-old")
    copier.materialise(old, old_attempt)
    live: set[str] = set()  # j-old has ended
    new, new_attempt = _job("j-new")

    def join() -> None:
        # The sweep has begun, its list not answered yet: j-new is placed and copies.
        live.add(new.id)
        copier.materialise(new, new_attempt)

    clusters.gpu.before_list = join
    copier.sweep("gpu-a100", lambda: live)
    copy = _regcred(clusters)
    assert copy is not None, "the sweep judged the copy by who was live before it listed"
    assert users(copy) == {"j-new"}


def test_a_job_joining_a_copy_after_a_sweep_listed_keeps_it() -> None:
    clusters, copier = _world()
    old, old_attempt = _job("j-old")
    copier.materialise(old, old_attempt)
    live: set[str] = set()  # j-old has ended
    new, new_attempt = _job("j-new")

    def join() -> None:
        # After the sweep's list, before its writes: j-new is placed and copies.
        live.add(new.id)
        copier.materialise(new, new_attempt)

    clusters.gpu.after_list = join
    copier.sweep("gpu-a100", lambda: live)
    copy = _regcred(clusters)
    assert copy is not None, "the sweep deleted a copy a launching job had just joined"
    assert users(copy) == {"j-old", "j-new"}  # judged again at the next sweep
    copier.sweep("gpu-a100", lambda: live)
    copy = _regcred(clusters)
    assert copy is not None
    assert users(copy) == {"j-new"}


def test_a_job_that_became_live_before_the_list_is_kept_by_the_sweep() -> None:
    clusters, copier = _world()
    old, old_attempt = _job("j-old")
    copier.materialise(old, old_attempt)
    new, new_attempt = _job("j-new")
    live = {new.id}
    copier.materialise(new, new_attempt)
    copier.sweep("gpu-a100", lambda: live)
    copy = _regcred(clusters)
    assert copy is not None
    assert users(copy) == {"j-new"}


def test_two_jobs_releasing_at_once_delete_the_copy_once_and_lose_no_user() -> None:
    clusters, copier = _world()
    first, first_attempt = _job("j-1")
    second, second_attempt = _job("j-2")
    third, third_attempt = _job("j-3")
    for job, attempt in ((first, first_attempt), (second, second_attempt), (third, third_attempt)):
        copier.materialise(job, attempt)

    # j-2 releases between j-1's list and j-1's write: j-1's write conflicts and retries.
    clusters.gpu.after_list = lambda: copier.release(second.id, "gpu-a100", NAMESPACE)
    copier.release(first.id, "gpu-a100", NAMESPACE)
    copy = _regcred(clusters)
    assert copy is not None
    assert users(copy) == {"j-3"}
    copier.release(third.id, "gpu-a100", NAMESPACE)
    assert _regcred(clusters) is None


def test_a_changed_source_updates_the_copy_for_the_next_job() -> None:
    clusters, copier = _world()
    first, first_attempt = _job("j-1")
    copier.materialise(first, first_attempt)
    source = clusters.plane.read_object("secrets", NAMESPACE, "regcred")
    assert source is not None
    clusters.plane.replace_object("secrets", NAMESPACE, {**source, "data": {"k": "bmV3"}})
    second, second_attempt = _job("j-2")
    said = copier.materialise(second, second_attempt)
    assert said == ("Secret regcred copied to gpu-a100/batch from plane/batch/regcred",)
    copy = _regcred(clusters)
    assert copy is not None
    assert copy["data"] == {"k": "bmV3"}
    assert users(copy) == {"j-1", "j-2"}


def test_an_object_that_is_not_a_copy_is_left_alone() -> None:
    clusters, copier = _world()
    clusters.gpu.create_object(
        "secrets", NAMESPACE, {"metadata": {"name": "regcred", "labels": {}}, "data": {}}
    )
    job, attempt = _job("j-1")
    assert copier.materialise(job, attempt) == ()
    copier.sweep("gpu-a100", set)
    copy = _regcred(clusters)
    assert copy is not None
    assert copy["data"] == {}


def test_an_attempt_releases_its_copies_when_its_job_finishes_or_it_is_given_up() -> None:
    job, attempt = _job("j-1")
    running = dataclasses.replace(job, state=State.RUNNING)
    assert _ended_attempt(job, running) is None  # the same attempt goes on
    assert _ended_attempt(running, dataclasses.replace(running, state=State.SUCCEEDED)) == attempt
    assert _ended_attempt(running, dataclasses.replace(running, state=State.CANCELLED)) == attempt
    moved = dataclasses.replace(running, state=State.QUEUED, attempt=None)
    assert _ended_attempt(running, moved) == attempt  # moved on: gpu-a100's copies go
    relaunched = dataclasses.replace(attempt, number=2, cluster="gpu-h100")
    assert _ended_attempt(running, dataclasses.replace(running, attempt=relaunched)) == attempt
    done = dataclasses.replace(running, state=State.SUCCEEDED)
    assert _ended_attempt(done, done) is None  # released once, when it finished
