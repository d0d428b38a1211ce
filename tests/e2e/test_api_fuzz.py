"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis) on the real stack.

Whatever a client sends, the answer is never a 5xx, and a refused request creates no pod:
at the end, every pod in the test namespace belongs to a job the API accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from kubernetes import client

from tests.e2e.conftest import ServiceProcess
from tests.stack import Stack


@pytest.fixture
def fuzzed_service(
    service: ServiceProcess, stack: Stack, namespace: str
) -> Iterator[ServiceProcess]:
    yield service
    accepted = {
        job["pod"]
        for job in httpx.get(f"{service.url}/v1/jobs", timeout=30).json()
        if job["state"] != "rejected" and job["pod"]
    }
    for cluster in ("plane", "gpu-a100", "gpu-h100"):
        with stack.kube(cluster) as api:
            names = {
                p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items
            }
        assert names <= accepted, f"pods without an accepted job on {cluster}: {names - accepted}"


@pytest.fixture
def api_schema(fuzzed_service: ServiceProcess) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_service.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_no_request_gets_a_server_error(case: Any, fuzzed_service: ServiceProcess) -> None:
    if case.path.endswith("/wait"):
        case.query = {**(case.query or {}), "timeout": 0}
    response = case.call(base_url=fuzzed_service.url, timeout=30)
    assert response.status_code < 500, (
        f"{case.method} {case.path}: {response.status_code} {response.text[:500]}"
    )
