"""No literal env value, and no credential from a log tail, leaves the task's pod spec.

On the real stack, with the service logging at debug: a task with a literal env value runs
and finishes; the value is absent from its pod's labels and annotations, from its job record
(the DispatchJob, read by an admin), from the API's job view, from ``/metrics`` and from the
service's log. It lives only in the pod's env and in the record's Secret, which a restart
needs to relaunch the task. A failing task whose log tail prints a password has it
redacted in the job message and kept out of the log.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from kubernetes import client

from dispatcher.core import JOB_ID_LABEL
from dispatcher.dispatching.records import env_secret_name
from tests.stack import Stack
from tests.support import finish, succeed, task, wait_until


def _record(stack: Stack, namespace: str, job_id: str) -> dict[str, Any]:
    with stack.kube("plane") as api:
        found = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "kube-dispatcher.dev", "v1", namespace, "dispatchjobs", job_id
        )
    return dict(found)


def _pods(stack: Stack, namespace: str, job_id: str) -> list[Any]:
    pods = []
    for cluster in ("plane", "gpu-a100", "gpu-h100"):
        with stack.kube(cluster) as api:
            pods += (
                client.CoreV1Api(api)
                .list_namespaced_pod(namespace, label_selector=f"{JOB_ID_LABEL}={job_id}")
                .items
            )
    return pods


def test_a_literal_env_value_stays_in_the_pod_env_and_the_records_secret(
    stack: Stack, namespace: str, service_factory: Any
) -> None:
    value = f"s3cr3t-{uuid.uuid4().hex}"
    service = service_factory(log_level="debug")
    with service.client() as api:
        job, _ = api.submit(
            task(
                "with-a-password",
                env_vars={"DB_PASSWORD": value, "MODE": "plain"},
                annotations=succeed("1s"),
                on_finish_action="keep_pod",
            )
        )
        done = finish(api, job["id"])
        assert done["state"] == "succeeded", done
        (pod,) = wait_until(lambda: _pods(stack, namespace, job["id"]), what="the kept pod")
        # The pod needs it in its env; nowhere else on the pod.
        (container,) = pod.spec.containers
        assert {e.name: e.value for e in container.env}["DB_PASSWORD"] == value
        assert value not in json.dumps(pod.metadata.annotations or {})
        assert value not in json.dumps(pod.metadata.labels or {})
        record = _record(stack, namespace, job["id"])
        assert value not in json.dumps(record)
        with stack.kube("plane") as admin:
            secret = client.CoreV1Api(admin).read_namespaced_secret(
                env_secret_name(job["id"]), namespace
            )
        assert secret.data, "the record's Secret holds the literal values for relaunching"
        assert value not in json.dumps(api.get(job["id"]))
        metrics = httpx.get(f"{service.url}/metrics", timeout=5).text
    assert value not in metrics
    log = service.log.read_text()
    assert job["id"] in log  # the log is the service's, written at debug
    assert value not in log


def test_a_password_in_a_failing_tasks_log_tail_is_redacted_and_not_logged(
    stack: Stack, namespace: str, service_factory: Any
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    service = service_factory(log_level="debug")
    with service.client() as api:
        job, _ = api.submit(
            task(
                "leaky-failure",
                annotations={
                    "sim.dispatcher.dev/fail-after": "1s",
                    "sim.dispatcher.dev/termination-message": (
                        f"Traceback...\nconnect(): password={password} refused"
                    ),
                },
            )
        )
        done = finish(api, job["id"])
        assert done["state"] == "failed", done
        assert "password=[redacted] refused" in done["message"], done
        assert password not in json.dumps(done)
        # The record's status (its spec holds the simulator's annotation itself).
        assert password not in json.dumps(_record(stack, namespace, job["id"])["status"])
    log = service.log.read_text()
    assert "job.finished" in log
    assert password not in log
