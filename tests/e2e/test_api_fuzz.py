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
from hypothesis import HealthCheck, given, settings
from kubernetes import client

from tests.stack import Stack
from tests.support import ADMIN_HEADERS, ServiceProcess


@pytest.fixture
def fuzzed_service(
    service: ServiceProcess, stack: Stack, namespace: str
) -> Iterator[ServiceProcess]:
    yield service
    accepted = {
        job["pod"]
        for job in httpx.get(f"{service.url}/v1/jobs", headers=ADMIN_HEADERS, timeout=30).json()
        if job["state"] != "rejected" and job["pod"]
    }
    for cluster in ("plane", "gpu-a100", "gpu-h100"):
        with stack.kube(cluster) as api:
            names = {
                p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items
            }
        assert names <= accepted, f"pods without an accepted job on {cluster}: {names - accepted}"


def test_no_request_gets_a_server_error(fuzzed_service: ServiceProcess) -> None:
    # Driven through hypothesis directly: schemathesis' pytest plugin does not run on
    # this pytest version.
    schema = schemathesis.openapi.from_url(f"{fuzzed_service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    failures: list[str] = []
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            if case.path.endswith("/wait"):
                case.query = {**(case.query or {}), "timeout": 0}
            response = case.call(base_url=fuzzed_service.url, timeout=30)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    + response.text[:300]
                )
            calls.append(response.status_code)

        call()
    assert failures == []
    # Each operation really was exercised, valid and invalid inputs alike.
    assert len(calls) >= 10 * len(operations), len(calls)
    assert any(code < 300 for code in calls)
    assert any(400 <= code < 500 for code in calls)
