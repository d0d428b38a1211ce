"""Copying a task's Secrets to the cluster that runs it leaks no value: not into the logs (at
debug), the metrics, or any error, its causes included, on success and on the failures a
copy can meet (a Vault path the policy forbids, a namespace RBAC does not grant). Real
stack: the plane's and gpu-a100's API servers, the stack's Vault, the real ``Connection``.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from dispatcher.clusters import ClusterCache
from dispatcher.core import parse_task_spec
from dispatcher.core.lifecycle import State
from dispatcher.credentials import VaultSession
from dispatcher.dispatching.copies import Copier
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.errors import ApiError, DispatcherError, VaultError
from dispatcher.metrics import REGISTRY
from dispatcher.settings import CopyDependencies, PlaneCopies, VaultCopy
from tests.clusters.conftest import cluster_settings
from tests.clusters.provider import KubeconfigProvider
from tests.credentials.conftest import events, kubernetes_auth
from tests.stack import Stack, StackEnv

#: Depends on the kubernetes client's generation (the Connection's Secret calls).
pytestmark = pytest.mark.generation


def _job(job_id: str, namespace: str, env: list[dict[str, object]]) -> tuple[Job, Attempt]:
    spec = parse_task_spec({"name": job_id, "image": "busybox:1.36", "env_vars": env})
    attempt = Attempt(1, "gpu-a100", f"{job_id}-pod", namespace, 0.0)
    return Job(job_id, spec, 0.0, state=State.LAUNCHING, attempt=attempt), attempt


def _chain(exc: BaseException) -> list[str]:
    """The words of an error and of every cause behind it."""
    words: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        words += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return words


def test_copies_leak_no_value_into_logs_metrics_or_errors(
    stack: Stack,
    stack_env: StackEnv,
    namespace: str,
    jwt_file: Path,
    log_output: io.StringIO,
) -> None:
    value = f"v-{uuid.uuid4().hex}"
    # The test's own admin calls read their answers raw (``_preload_content=False``): the
    # kubernetes client logs a preloaded answer's body at debug, which would be the test's
    # leak, not the dispatcher's.
    with stack.kube("plane") as api:
        client.CoreV1Api(api).create_namespaced_secret(
            namespace,
            {"metadata": {"name": "db"}, "stringData": {"pw": value}},
            _preload_content=False,
        ).release_conn()
    policy = CopyDependencies(
        from_plane=PlaneCopies(secrets=("db",)),
        # A path the stack's Vault policy does not grant: the read is refused.
        from_vault=(VaultCopy(name="forbidden", path="other/x", keys=("k",)),),
    )
    plane = cluster_settings(stack_env, "plane", pod_defaults={"namespace": namespace})
    gpu = cluster_settings(stack_env, "gpu-a100", pod_defaults={"namespace": namespace}).model_copy(
        update={"copy_dependencies": policy}
    )
    cache = ClusterCache([plane, gpu], KubeconfigProvider(stack_env))
    cache.start()
    vault = VaultSession(kubernetes_auth(stack_env, jwt_file))
    errors: list[BaseException] = []
    try:
        assert cache.wait_synced(30)
        copier = Copier(cache, vault)
        needs_db = [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]
        job, attempt = _job("j-ok", namespace, needs_db)
        assert copier.materialise(job, attempt) == (
            f"Secret db copied to gpu-a100/{namespace} from plane/{namespace}/db",
        )
        with stack.kube("gpu-a100") as api:
            answer = client.CoreV1Api(api).read_namespaced_secret(
                "db", namespace, _preload_content=False
            )
            copied = json.loads(answer.data)
        assert base64.b64decode(copied["data"]["pw"]).decode() == value

        needs_forbidden = [
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "forbidden", "key": "k"}}}
        ]
        refused, refused_attempt = _job("j-vault", namespace, needs_forbidden)
        with pytest.raises(VaultError) as vault_refused:
            copier.materialise(refused, refused_attempt)
        errors.append(vault_refused.value)

        # A namespace the stack grants the dispatcher nothing in: RBAC refuses the copy.
        elsewhere, elsewhere_attempt = _job("j-rbac", "default", needs_db)
        with pytest.raises(ApiError) as forbidden:
            copier.materialise(elsewhere, elsewhere_attempt)
        assert forbidden.value.status == 403
        errors.append(forbidden.value)

        copier.release(job.id, "gpu-a100", namespace)
        with stack.kube("gpu-a100") as api:
            left = client.CoreV1Api(api).list_namespaced_secret(
                namespace, label_selector="kube-dispatcher.dev/copy=true", _preload_content=False
            )
            assert json.loads(left.data)["items"] == []
    except DispatcherError as exc:
        errors.append(exc)
        raise
    finally:
        cache.stop()
        vault.close()

    assert "job.dependencies_materialised" in {e["event"] for e in events(log_output)}
    logs = log_output.getvalue()
    metrics = generate_latest(REGISTRY).decode()
    words = [w for exc in errors for w in _chain(exc)]
    for secret in (value, base64.b64encode(value.encode()).decode()):
        assert secret not in logs
        assert secret not in metrics
        for word in words:
            assert secret not in word, word
