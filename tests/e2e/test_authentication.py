"""Who may call the API, and what each tenant may do, on the real stack.

The dispatcher runs as a process with the test settings' authentication: the ``admin``
tenant's static token, and ServiceAccount tokens of ``plane`` for the audience
``kube-dispatcher`` (TokenReview against plane's API server). Every refusal is judged from
outside: an admin client lists the pods of every cluster and the job records in plane,
and nothing may be there for a refused request; the answer must say why.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from kubernetes import client
from typer.testing import CliRunner

from dispatcher.cli import EXIT_BAD_INPUT, app
from dispatcher.client import ApiClientError, DispatcherClient
from dispatcher.dispatching.records import GROUP, PLURAL, VERSION
from tests.stack import Stack
from tests.stack.dispatcher_config import AUDIENCE
from tests.stack.pki import Pki
from tests.support import ADMIN_TOKEN, ServiceProcess, task, wait_until

CLUSTERS = ("plane", "gpu-a100", "gpu-h100")
TEAM_B_TOKEN = "team-b-token"
TEAM_R_TOKEN = "team-r-token"
runner = CliRunner()


def pods_everywhere(stack: Stack, namespace: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for cluster in CLUSTERS:
        with stack.kube(cluster) as api:
            items = client.CoreV1Api(api).list_namespaced_pod(namespace).items
        found[cluster] = sorted(p.metadata.name for p in items)
    return found


def records(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    with stack.kube("plane") as api:
        listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )
    return list(listed["items"])


def assert_nothing_created(stack: Stack, namespace: str) -> None:
    assert pods_everywhere(stack, namespace) == {c: [] for c in CLUSTERS}
    assert records(stack, namespace) == []


@pytest.fixture
def worker(stack: Stack, namespace: str) -> str:
    """A ServiceAccount ``worker`` in plane (an Airflow worker's identity): its name."""
    with stack.kube("plane") as api:
        client.CoreV1Api(api).create_namespaced_service_account(
            namespace, {"metadata": {"name": "worker"}}
        )
    return "worker"


@pytest.fixture
def tenants_service(service_factory: Any, namespace: str, worker: str) -> ServiceProcess:
    tenants = {
        # Its workers authenticate with their ServiceAccount tokens; GPUs on H100s only.
        "team-a": {"callers": [f"{namespace}/{worker}"], "clusters": ["plane", "gpu-h100"]},
        "team-b": {},
        # Held to ``restricted`` although every cluster enforces only ``baseline``.
        "team-r": {"pod_security": "restricted"},
    }
    digest = hashlib.sha256(TEAM_B_TOKEN.encode()).hexdigest()
    service: ServiceProcess = service_factory(
        tenants=tenants,
        auth={
            "static_tokens": [
                {"sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(), "tenant": "admin"},
                {"sha256": digest, "tenant": "team-b"},
                {"sha256": hashlib.sha256(TEAM_R_TOKEN.encode()).hexdigest(), "tenant": "team-r"},
            ],
            "token_review": {"audience": AUDIENCE},
        },
    )
    return service


@pytest.fixture
def admin(tenants_service: ServiceProcess) -> Iterator[DispatcherClient]:
    with tenants_service.client() as api:
        yield api


def test_a_request_without_a_token_is_refused_and_creates_nothing(
    tenants_service: ServiceProcess, stack: Stack, namespace: str
) -> None:
    answer = httpx.post(f"{tenants_service.url}/v1/jobs", json=task("anonymous"), timeout=10)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "bearer token is required" in answer.json()["detail"]
    assert_nothing_created(stack, namespace)


def test_a_wrong_token_is_refused_and_creates_nothing(
    tenants_service: ServiceProcess, stack: Stack, namespace: str, admin: DispatcherClient
) -> None:
    with (
        tenants_service.client(token="not-a-token", retries=0) as api,
        pytest.raises(ApiClientError) as refused,
    ):
        api.submit(task("wrong-token"))
    assert refused.value.status == 401
    assert "refused" in refused.value.detail
    assert admin.jobs() == []
    assert_nothing_created(stack, namespace)


def test_a_service_account_token_for_another_audience_is_refused(
    tenants_service: ServiceProcess, stack: Stack, namespace: str, worker: str
) -> None:
    token = stack.service_account_token(
        "plane", namespace, worker, seconds=600, audiences=["vault"]
    )
    with (
        tenants_service.client(token=token, retries=0) as api,
        pytest.raises(ApiClientError) as refused,
    ):
        api.submit(task("other-audience"))
    assert refused.value.status == 401
    assert "audience" in refused.value.detail
    assert token not in refused.value.detail
    assert_nothing_created(stack, namespace)


def _expired_token(stack: Stack, namespace: str, name: str) -> str:
    """A token for ``namespace/name`` signed with plane's ServiceAccount key, for the
    dispatcher's audience, that expired a minute ago (the TokenRequest API refuses
    lifetimes under ten minutes, too long to wait for)."""
    with stack.kube("plane") as api:
        account = client.CoreV1Api(api).read_namespaced_service_account(name, namespace)
    now = int(time.time())
    claims = {
        "iss": "https://plane.stack.invalid",
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "aud": [AUDIENCE],
        "iat": now - 3600,
        "nbf": now - 3600,
        "exp": now - 60,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": account.metadata.uid},
        },
    }
    key = Pki(stack.state_dir / "pki").sa_key.read_bytes()
    return jwt.encode(claims, key, algorithm="RS256")


def test_an_expired_service_account_token_is_refused_and_says_so(
    tenants_service: ServiceProcess, stack: Stack, namespace: str, worker: str
) -> None:
    with (
        tenants_service.client(token=_expired_token(stack, namespace, worker), retries=0) as api,
        pytest.raises(ApiClientError) as refused,
    ):
        api.submit(task("expired"))
    assert refused.value.status == 401
    assert "expired" in refused.value.detail
    assert_nothing_created(stack, namespace)


def test_a_tenants_job_is_invisible_to_another_tenant(
    tenants_service: ServiceProcess,
    stack: Stack,
    namespace: str,
    worker: str,
    admin: DispatcherClient,
) -> None:
    token = stack.service_account_token(
        "plane", namespace, worker, seconds=600, audiences=[AUDIENCE]
    )
    with tenants_service.client(token=token) as team_a:
        job, created = team_a.submit(task("team-a-job"))
        assert created
        assert job["tenant"] == "team-a"
        wait_until(lambda: team_a.get(job["id"])["state"] == "running", what="running")
    before = pods_everywhere(stack, namespace)
    with tenants_service.client(token=TEAM_B_TOKEN, retries=0) as team_b:
        for call in (team_b.get, team_b.cancel, team_b.acknowledge):
            with pytest.raises(ApiClientError) as hidden:
                call(job["id"])
            assert hidden.value.status == 404, call
        with pytest.raises(ApiClientError) as hidden:
            list(team_b.logs(job["id"]))
        assert hidden.value.status == 404
        assert team_b.jobs() == []
        # The same idempotency key is team-b's own: it names another job.
        assert team_b.find(job["idempotency_key"]) is None
    # The job was not touched: still running, its pod still there.
    assert admin.get(job["id"])["state"] == "running"
    assert pods_everywhere(stack, namespace) == before
    assert [j["id"] for j in admin.jobs()] == [job["id"]]


def test_a_task_asking_for_more_than_its_tenant_may_have_is_403_and_creates_nothing(
    tenants_service: ServiceProcess, stack: Stack, namespace: str
) -> None:
    with (
        tenants_service.client(token=TEAM_B_TOKEN, retries=0) as team_b,
        pytest.raises(ApiClientError) as refused,
    ):
        team_b.submit(
            task(
                "greedy",
                service_account_name="cluster-admin",
                priority_class_name="system-node-critical",
            )
        )
    assert refused.value.status == 403
    fields = {p["field"]: p["message"] for p in refused.value.problems}
    assert "tenants.team-b.service_accounts" in fields["service_account_name"]
    assert "tenants.team-b.priority_classes" in fields["priority_class_name"]
    assert_nothing_created(stack, namespace)


def test_a_tenant_held_to_restricted_is_refused_a_root_task_that_baseline_allows(
    tenants_service: ServiceProcess, stack: Stack, namespace: str
) -> None:
    as_root = task("as-root", container_security_context={"runAsUser": 0})
    with tenants_service.client(token=TEAM_R_TOKEN, retries=0) as team_r:
        for attempt in (team_r.explain, team_r.submit):
            with pytest.raises(ApiClientError) as refused:
                attempt(as_root)
            assert refused.value.status == 422
            fields = [p["field"] for p in refused.value.problems]
            assert "container_security_context.runAsUser" in fields, refused.value.problems
    # The same task from a tenant without a level of its own meets the clusters' baseline.
    with tenants_service.client(token=TEAM_B_TOKEN, retries=0) as team_b:
        assert team_b.explain(as_root)["cluster"] is not None
    assert_nothing_created(stack, namespace)


def test_a_tenants_task_never_lands_on_a_cluster_it_may_not_use(
    tenants_service: ServiceProcess, stack: Stack, namespace: str, worker: str
) -> None:
    # Any GPU model would do, and A100s are cheaper: team-a may use only H100s.
    gpu_task = task("gpu", gpus=1)
    token = stack.service_account_token(
        "plane", namespace, worker, seconds=600, audiences=[AUDIENCE]
    )
    with tenants_service.client(token=token) as team_a:
        explained = team_a.explain(gpu_task)
        assert explained["cluster"] == "gpu-h100"
        a100 = next(c for c in explained["clusters"] if c["cluster"] == "gpu-a100")
        assert a100["reason"] == "not-allowed"
        assert "tenants.team-a.clusters" in a100["message"]
        job, _ = team_a.submit(gpu_task)
        wait_until(lambda: team_a.get(job["id"])["state"] == "running", what="running")
    placed = pods_everywhere(stack, namespace)
    assert placed["gpu-a100"] == []
    assert len(placed["gpu-h100"]) == 1


def test_the_cli_authenticates_with_a_token_file_and_explains_every_refusal(
    tenants_service: ServiceProcess, stack: Stack, namespace: str, worker: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(
        stack.service_account_token("plane", namespace, worker, seconds=600, audiences=[AUDIENCE])
    )
    with tenants_service.client(token=token_file.read_text()) as team_a:
        job, _ = team_a.submit(task("seen-by-the-cli"))
    server = ["--server", tenants_service.url]

    listed = runner.invoke(app, ["status", *server, "--token-file", str(token_file), "-o", "json"])
    assert listed.exit_code == 0, listed.output
    assert [j["id"] for j in json.loads(listed.output)] == [job["id"]]

    anonymous = runner.invoke(app, ["status", *server])
    assert anonymous.exit_code == 1
    assert "bearer token is required" in anonymous.output

    both = runner.invoke(app, ["status", *server, "--token", "x", "--token-file", str(token_file)])
    assert both.exit_code == EXIT_BAD_INPUT
    assert "not both" in both.output

    missing = runner.invoke(app, ["status", *server, "--token-file", str(tmp_path / "absent")])
    assert missing.exit_code == EXIT_BAD_INPUT
    assert "cannot read the token file" in missing.output
    for result in (listed, anonymous, both, missing):
        assert "Traceback" not in result.output
