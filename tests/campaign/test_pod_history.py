"""The campaign's observer on the real stack: an admin watch writes every change of a
dispatcher-labelled pod, and its own outages, to the pod history."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from benchmarks.fault_campaign.history import PodWatch
from benchmarks.fault_campaign.records import PODS_FILE, HistoryFiles
from dispatcher.core.podspec import ATTEMPT_LABEL, JOB_ID_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from tests.stack import Stack
from tests.support import wait_until

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def labelled_pod(name: str, job_id: str, *, managed: bool = True) -> dict[str, Any]:
    labels = {JOB_ID_LABEL: job_id, ATTEMPT_LABEL: "0"}
    if managed:
        labels[MANAGED_BY_LABEL] = MANAGED_BY_VALUE
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "base", "image": "python:3.12"}],
            "tolerations": [GPU_TOLERATION],
        },
    }


def records(folder: Path) -> list[dict[str, Any]]:
    path = folder / PODS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture
def history(tmp_path: Path) -> Iterator[HistoryFiles]:
    files = HistoryFiles(tmp_path / "history")
    yield files
    files.close()


def watch_on(stack: Stack, cluster: str, namespace: str, files: HistoryFiles) -> PodWatch:
    env = stack.env().clusters[cluster]
    watch = PodWatch(cluster, env.server, env.admin_token, env.ca_file, namespace, files.pods)
    watch.start()
    return watch


def test_every_change_of_a_dispatcher_pod_is_written_with_its_job_and_attempt(
    stack: Stack, namespace: str, history: HistoryFiles
) -> None:
    watch = watch_on(stack, "plane", namespace, history)
    with stack.kube("plane") as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(namespace, labelled_pod("other", "j-other", managed=False))
        core.create_namespaced_pod(namespace, labelled_pod("ours", "j-ours"))
        wait_until(
            lambda: any(r.get("phase") == "Running" for r in records(history.folder)),
            what="the pod seen running",
        )
        core.delete_namespaced_pod("ours", namespace, grace_period_seconds=0)
        wait_until(
            lambda: any(r["event"] == "DELETED" for r in records(history.folder)),
            what="the deletion written",
        )
    watch.stop()

    seen = records(history.folder)
    pods = [r for r in seen if r["event"] in ("ADDED", "MODIFIED", "DELETED")]
    assert {r["pod"] for r in pods} == {"ours"}, "only dispatcher-labelled pods are watched"
    assert pods[0]["event"] == "ADDED"
    assert pods[-1]["event"] == "DELETED"
    assert {(r["job_id"], r["attempt"], r["namespace"], r["synthetic"]) for r in pods} == {
        ("j-ours", 0, namespace, False)
    }
    running = next(r for r in pods if r["phase"] == "Running")
    assert running["node"]
    assert running["uid"]
    assert running["mono"] < running["t"]
    assert seen[-1]["event"] == "WATCH_STOPPED"
    assert seen[-1]["alive"] == []


def test_an_apiserver_outage_is_written_as_a_gap_and_the_relist_closes_it(
    stack: Stack, namespace: str, history: HistoryFiles, faults: Any
) -> None:
    watch = watch_on(stack, "gpu-h100", namespace, history)
    with stack.kube("gpu-h100") as api:
        client.CoreV1Api(api).create_namespaced_pod(namespace, labelled_pod("before", "j1"))
    wait_until(lambda: records(history.folder), what="the pod seen")
    faults.stop_apiserver("gpu-h100")
    wait_until(
        lambda: any(r["event"] == "WATCH_GAP" for r in records(history.folder)),
        what="the gap written",
    )
    faults.start_apiserver("gpu-h100")
    wait_until(
        lambda: any(r["event"] == "WATCH_RESUMED" for r in records(history.folder)),
        timeout=60,
        what="the watch resumed",
    )
    with stack.kube("gpu-h100") as api:
        client.CoreV1Api(api).create_namespaced_pod(namespace, labelled_pod("after", "j2"))
    wait_until(
        lambda: any(r.get("pod") == "after" for r in records(history.folder)),
        what="a pod created after the outage seen",
    )
    watch.stop()

    seen = records(history.folder)
    gap = next(r for r in seen if r["event"] == "WATCH_GAP")
    resumed = next(r for r in seen if r["event"] == "WATCH_RESUMED")
    assert gap["since"] <= gap["mono"] < resumed["mono"]
    assert resumed["gap_seconds"] > 0
    # The pod alive through the outage is not reported deleted by the relist.
    assert not [r for r in seen if r.get("pod") == "before" and r["event"] == "DELETED"]
    assert sorted(seen[-1]["alive"]) == sorted(
        {r["uid"] for r in seen if r.get("pod") in ("before", "after")}
    )
