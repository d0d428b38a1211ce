"""An independent observer for the benchmarks: an admin watch on one namespace of each
cluster that records when each task's pod was first seen, first seen Running, and first
seen finished (Succeeded, Failed or deleted), keyed by a label the contender set.

The watch goes through the kubernetes client's ``Watch.stream`` (``deserialize=False``: the
events' objects stay dicts), which joins a JSON event split across chunks of the HTTP
stream; reading the raw stream chunk by chunk did not, and an event split that way crashed
the reader. I/O: watches the apiservers.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.stack.launcher import Stack

FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass
class PodTimes:
    """What the admin watch saw, per task key (the label's value), in epoch seconds."""

    created: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    #: The pod's name (a task has one pod in these benchmarks).
    pods: dict[str, str] = field(default_factory=dict)

    def see(self, kind: str, pod: dict[str, Any], label: str, now: float) -> None:
        metadata = pod.get("metadata") or {}
        key = (metadata.get("labels") or {}).get(label)
        if not key:
            return
        self.pods.setdefault(key, str(metadata.get("name", "")))
        self.created.setdefault(key, now)
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running":
            self.running.setdefault(key, now)
        if phase in FINISHED_PHASES:
            self.finished.setdefault(key, now)
        if kind == "DELETED":
            self.finished.setdefault(key, now)
            self.deleted.setdefault(key, now)


def _follow(
    stack: Stack,
    cluster: str,
    namespace: str,
    label: str,
    *,
    times: PodTimes,
    ready: threading.Event,
    stop: threading.Event,
) -> None:
    with stack.kube(cluster) as api:
        core = client.CoreV1Api(api)
        version = ""
        while not stop.is_set():
            if not version:
                listed = core.list_namespaced_pod(namespace, label_selector=label)
                now = time.time()
                for pod in listed.items:
                    times.see("ADDED", api.sanitize_for_serialization(pod), label, now)
                version = listed.metadata.resource_version
                ready.set()
            try:
                for event in watch.Watch().stream(
                    core.list_namespaced_pod,
                    namespace,
                    label_selector=label,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=5,
                    deserialize=False,
                    _request_timeout=(5, 30),
                ):
                    pod = event["object"]
                    version = (pod.get("metadata") or {}).get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        times.see(event["type"], pod, label, time.time())
                    if stop.is_set():
                        break
            except ApiException as exc:
                if exc.status != 410:  # expired: list again from now
                    raise
                version = ""
            except KeyError:
                # An ERROR event (an expired version) without deserializing: the client
                # looks for a key only deserialized events have. List again from now.
                version = ""


@contextlib.contextmanager
def watching(
    stack: Stack, namespace: str, label: str, clusters: tuple[str, ...] | None = None
) -> Iterator[PodTimes]:
    """Watch ``namespace`` on ``clusters`` (every cluster by default) for pods carrying
    ``label``; the block runs once every watch has listed (nothing after is missed)."""
    times = PodTimes()
    stop = threading.Event()
    names = clusters or tuple(spec.name for spec in stack.clusters)
    threads = []
    for name in names:
        ready = threading.Event()
        thread = threading.Thread(
            target=_follow,
            args=(stack, name, namespace, label),
            kwargs={"times": times, "ready": ready, "stop": stop},
            daemon=True,
            name=f"podwatch-{name}",
        )
        thread.start()
        if not ready.wait(30):
            stop.set()
            raise RuntimeError(f"the admin watch on {name}/{namespace} did not list in 30 s")
        threads.append(thread)
    try:
        yield times
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
