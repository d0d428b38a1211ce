"""Traces on the stack: one trace per job, as an OTLP collector receives it.

The dispatcher runs as a real process with tracing on, exporting to an in-process OTLP/HTTP
collector (``tests.otlp``); the spans are judged as the collector decoded them, and their
times against the apiserver's own record of the pod (its creationTimestamp), not against
the dispatcher's account.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from opentelemetry.sdk.trace import TracerProvider

from dispatcher.client import DispatcherClient
from dispatcher.tracing import JobTrace
from tests.otlp import Collector, ReceivedSpan
from tests.stack import Stack
from tests.stack.dispatcher_config import dispatcher_settings
from tests.support import ADMIN_TOKEN, ServiceProcess, finish, succeed, task, wait_until

SECRET_VALUE = "s3cr3t-value-never-in-a-span"
PHASES = ("queued", "launching", "pending", "running")


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector().running() as running:
        yield running


def _service(stack: Stack, namespace: str, tmp_path: Path, collector: Collector) -> ServiceProcess:
    config = dispatcher_settings(stack, tmp_path / "svc", namespace=namespace)
    text = config.read_text()
    config.write_text(
        text
        + "tracing:\n"
        + "  enabled: true\n"
        + f"  endpoint: {collector.endpoint}\n"
        + "  service_name: kd-under-test\n"
        + "  export_delay_seconds: 0.2\n"
    )
    return ServiceProcess(config, tmp_path / "svc.log")


def _by_name(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    named: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def _root(trace_id: str) -> Any:
    def found(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
        return next((s for s in spans if s.trace_id == trace_id and s.name == "job"), None)

    return found


def test_a_job_is_one_trace_from_submission_to_outcome_under_its_callers_span(
    stack: Stack, namespace: str, tmp_path: Path, collector: Collector
) -> None:
    service = _service(stack, namespace, tmp_path, collector)
    service.start()
    # The caller's span (an Airflow task's, say): the client sends its context.
    caller = TracerProvider().get_tracer("test")
    spec = task(
        "traced",
        gpus=1,
        model="H100",
        annotations=succeed("1s"),
        env_vars=[{"name": "TOKEN", "value": SECRET_VALUE}],
    )
    try:
        with (
            caller.start_as_current_span("airflow-task") as airflow_span,
            DispatcherClient(service.url, token=ADMIN_TOKEN, retries=3) as api,
        ):
            job, created = api.submit(spec)
        assert created
        context = airflow_span.get_span_context()
        trace_id, caller_span = f"{context.trace_id:032x}", f"{context.span_id:016x}"
        with service.client() as api:
            done = finish(api, job["id"])
        assert (done["state"], done["cluster"]) == ("succeeded", "gpu-h100")
        root = collector.wait_for(_root(trace_id))
    finally:
        service.stop()

    spans = collector.spans(trace_id)
    named = _by_name(spans)
    # The job's root is a child of the caller's span; its id is the job's.
    assert root.parent_id == caller_span
    assert root.span_id == f"{JobTrace(job['id']).root_span_id:016x}"
    assert root.attributes["dispatcher.outcome"] == "succeeded"
    assert root.attributes["dispatcher.cluster"] == "gpu-h100"
    assert root.service_name == "kd-under-test"
    # Every phase once, under the root, one after the other, inside the root.
    for name in ("submit", *PHASES):
        assert len(named.get(name, [])) == 1, (name, sorted(named))
        assert named[name][0].parent_id == root.span_id, name
    phases = [named[name][0] for name in PHASES]
    assert phases[0].start >= root.start - 0.001
    for before, after in itertools.pairwise(phases):
        assert before.end <= after.start + 0.001, (before.name, after.name)
    assert phases[-1].end <= root.end + 0.001
    assert named["queued"][0].attributes["dispatcher.routing.cluster"] == "gpu-h100"
    assert "scheduled" in named["pending"][0].events
    # Routing at submission under the submit span; credentials under the pod create.
    (route,) = named["route"]
    assert route.parent_id == named["submit"][0].span_id
    (create,) = named["pod.create"]
    assert create.parent_id == root.span_id
    # The dependency copies (none needed here) come before the pod, as their span says.
    (dependencies,) = named["dependencies"]
    assert dependencies.parent_id == root.span_id
    assert dependencies.end <= create.start + 0.001
    assert create.attributes["k8s.pod.name"] == done["pod"]
    # (The submit's record writes to plane get credentials too, under the submit span.)
    (credentials,) = [s for s in named["credentials"] if s.parent_id == create.span_id]
    assert credentials.attributes["dispatcher.cluster"] == "gpu-h100"
    assert create.start <= credentials.start <= credentials.end <= create.end
    # The apiserver created the pod while the create span was open (second precision).
    with stack.kube("gpu-h100") as admin:
        pod = client.CoreV1Api(admin).read_namespaced_pod(done["pod"], namespace)
    created_at = pod.metadata.creation_timestamp.timestamp()
    assert int(create.start) - 1 <= created_at <= create.end + 1
    launching = named["launching"][0]
    assert launching.start - 0.001 <= create.start
    assert create.end <= launching.end + 0.5
    # One trace: nothing of this job elsewhere, and no value of its spec in any span.
    assert not [
        s
        for s in collector.spans()
        if s.attributes.get("dispatcher.job.id") == job["id"] and s.trace_id != trace_id
    ]
    assert not [s.name for s in spans if SECRET_VALUE in s.raw]


def test_a_trace_survives_a_restart_and_a_job_without_a_caller_gets_its_own(
    stack: Stack, namespace: str, tmp_path: Path, collector: Collector
) -> None:
    service = _service(stack, namespace, tmp_path, collector)
    service.start()
    try:
        with service.client() as api:
            job, _ = api.submit(task("restarted"))  # runs until cancelled
            wait_until(lambda: api.get(job["id"])["state"] == "running", what="running")
        ids = JobTrace(job["id"])
        trace_id = f"{ids.trace_id:032x}"
        # The first process's spans were exported before it is killed (-9 loses its buffer).
        collector.wait_for(
            lambda spans: any(s.trace_id == trace_id and s.name == "pending" for s in spans)
        )
        service.kill9()
        service.start()
        with service.client() as api:
            api.cancel(job["id"])
            assert finish(api, job["id"])["state"] == "cancelled"
        root = collector.wait_for(_root(trace_id))
    finally:
        service.stop()
    named = _by_name(collector.spans(trace_id))
    assert root.parent_id == ""  # no caller: the job's trace is its own
    assert root.attributes["dispatcher.outcome"] == "cancelled"
    # The phases the first process ended, and those the second one ended after re-reading
    # the record, all under the one root.
    for name in ("submit", "queued", "launching", "pending", "running", "cancelling"):
        assert [s.parent_id for s in named.get(name, [])] == [root.span_id], (name, sorted(named))
    # The second process's running span starts when the record says the job started.
    running = named["running"][0]
    assert running.start < named["cancelling"][0].start
    assert running.start >= named["pending"][0].end - 0.001
