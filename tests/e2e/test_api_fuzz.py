"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis) on the real stack.

Whatever a client sends, with no token, a wrong one or the admin tenant's, the answer is
never a 5xx; without a valid token every ``/v1`` request is a 401; and a refused request
creates no pod: at the end, every pod in the test namespace belongs to a job the API
accepted. Oversized and deeply nested bodies are refused (413, 422) before any parser
recurses into them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from kubernetes import client

from tests.stack import Stack
from tests.support import ADMIN_HEADERS, ServiceProcess

#: Who calls: nobody, a wrong token, the admin tenant.
CALLERS: dict[str, dict[str, str]] = {
    "anonymous": {},
    "wrong token": {"Authorization": "Bearer wrong-token"},
    "admin": ADMIN_HEADERS,
}
JSON_ADMIN = {**ADMIN_HEADERS, "Content-Type": "application/json"}


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

    def fuzz(operation: Any, who: str, headers: dict[str, str]) -> None:
        @given(case=operation.as_strategy())
        @settings(
            max_examples=40 if who == "admin" else 15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            if case.path.endswith("/wait"):
                case.query = {**(case.query or {}), "timeout": 0}
            response = case.call(base_url=fuzzed_service.url, headers=headers, timeout=30)
            where = f"{who}: {case.method} {case.formatted_path}: {response.status_code} "
            if response.status_code >= 500:
                failures.append(where + response.text[:300])
            elif who != "admin" and response.status_code != 401:
                failures.append(where + "(expected 401) " + response.text[:300])
            calls.append(response.status_code)

        call()

    for operation, (who, headers) in itertools.product(operations, CALLERS.items()):
        fuzz(operation, who, headers)
    assert failures == []
    # Each operation really was exercised, valid and invalid inputs alike.
    assert len(calls) >= 10 * len(operations), len(calls)
    assert any(code < 300 for code in calls)
    assert any(400 <= code < 401 or 401 < code < 500 for code in calls)


def test_oversized_and_deeply_nested_bodies_are_refused_not_500(
    fuzzed_service: ServiceProcess,
) -> None:
    url = f"{fuzzed_service.url}/v1/jobs"
    huge = b'{"image": "python:3.12", "name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    answer = httpx.post(url, content=huge, headers=JSON_ADMIN, timeout=30)
    assert answer.status_code == 413
    assert "service.max_body_bytes" in answer.json()["detail"]

    def chunks() -> Any:
        for _ in range(40):
            yield b" " * 65536

    # No Content-Length: the limit holds while the body is read.
    answer = httpx.post(url, content=chunks(), headers=JSON_ADMIN, timeout=30)
    assert answer.status_code == 413
    for path in ("/v1/jobs", "/v1/route"):
        deep = b"[" * 100_000 + b"]" * 100_000
        answer = httpx.post(
            f"{fuzzed_service.url}{path}", content=deep, headers=JSON_ADMIN, timeout=30
        )
        assert answer.status_code == 422, answer.text[:300]
        assert "service.max_json_depth" in answer.text
        nested: Any = {"image": "python:3.12"}
        for _ in range(200):
            nested = {"annotations": nested}
        answer = httpx.post(
            f"{fuzzed_service.url}{path}", json=nested, headers=ADMIN_HEADERS, timeout=30
        )
        assert answer.status_code == 422, answer.text[:300]
