"""A cancelled task's pod gets the task's own termination_grace_period (bounded by
``service.max_cancel_grace_seconds``), else ``service.cancel_grace_seconds``: read from the
apiserver, which records the grace of a graceful delete on the pod before KWOK removes it."""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client, watch

from tests.stack import Stack
from tests.support import task, wait_until


def test_cancel_gives_the_pod_the_tasks_own_grace_bounded_by_the_settings(
    stack: Stack, service_factory: Any, namespace: str
) -> None:
    service = service_factory(cancel_grace_seconds=7, max_cancel_grace_seconds=120)
    graces: dict[str, int] = {}
    seen_all = threading.Event()
    wanted = {"own": 45, "bounded": 5000, "default": None}

    def observe() -> None:
        # An independent observer: the admin's watch of the plane cluster's pods.
        with stack.kube("plane") as kube:
            stream = watch.Watch()
            for event in stream.stream(
                client.CoreV1Api(kube).list_namespaced_pod, namespace, timeout_seconds=120
            ):
                pod = event["object"]
                grace = pod.metadata.deletion_grace_period_seconds
                if pod.metadata.deletion_timestamp is not None and grace is not None:
                    graces.setdefault(pod.metadata.name.split("-")[0], grace)
                if len(graces) == len(wanted):
                    seen_all.set()
                    stream.stop()

    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    with service.client() as api:
        jobs = {}
        for name, period in wanted.items():
            extra = {} if period is None else {"termination_grace_period": period}
            spec = task(name, requirements={"allowed_clusters": ["plane"]}, **extra)
            jobs[name] = api.submit(spec)[0]["id"]
        for job_id in jobs.values():
            wait_until(lambda j=job_id: api.get(j)["state"] == "running", what="running")
        for job_id in jobs.values():
            api.cancel(job_id)
        assert seen_all.wait(60), graces
    assert graces == {"own": 45, "bounded": 120, "default": 7}
