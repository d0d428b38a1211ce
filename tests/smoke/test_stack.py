"""The test stack behaves like the real thing: scheduling, simulated outcomes, logs, Vault.

These tests talk to the stack's real servers with the plain kubernetes and hvac clients,
so they check the stack itself, not the dispatcher.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import hvac
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.stack import Stack, StackEnv

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod(
    name: str,
    *,
    gpus: int = 0,
    tolerate_gpu: bool = False,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "3Gi"},
    }
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "resources": resources}],
            "tolerations": [GPU_TOLERATION] if tolerate_gpu else [],
        },
    }


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def a100(stack: Stack) -> Any:
    with stack.kube("gpu-a100") as api:
        yield client.CoreV1Api(api)


def test_gpu_pod_with_toleration_is_bound_to_an_a100_node_and_succeeds(
    a100: Any, namespace: str
) -> None:
    a100.create_namespaced_pod(
        namespace,
        pod(
            "train",
            gpus=2,
            tolerate_gpu=True,
            annotations={"sim.dispatcher.dev/succeed-after": "1s"},
        ),
    )
    done = wait_for(
        lambda: (
            (p := a100.read_namespaced_pod("train", namespace)).status.phase == "Succeeded" and p
        ),
        what="pod Succeeded",
    )
    node = a100.read_node(done.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert done.status.container_statuses[0].state.terminated.exit_code == 0


def test_gpu_pod_without_toleration_stays_pending_with_failed_scheduling(
    a100: Any, namespace: str
) -> None:
    a100.create_namespaced_pod(namespace, pod("untolerated", gpus=1))

    def failed_scheduling() -> Any:
        events = a100.list_namespaced_event(
            namespace, field_selector="involvedObject.name=untolerated"
        ).items
        return [e for e in events if e.reason == "FailedScheduling"]

    events = wait_for(failed_scheduling, what="FailedScheduling event")
    assert "untolerated taint" in events[0].message
    current = a100.read_namespaced_pod("untolerated", namespace)
    assert current.status.phase == "Pending"
    assert current.spec.node_name is None


def test_pod_annotated_oom_fails_with_oomkilled(a100: Any, namespace: str) -> None:
    annotations = {
        "sim.dispatcher.dev/fail-after": "1s",
        "sim.dispatcher.dev/exit-code": "137",
        "sim.dispatcher.dev/reason": "OOMKilled",
    }
    a100.create_namespaced_pod(
        namespace, pod("oom", gpus=1, tolerate_gpu=True, annotations=annotations)
    )
    failed = wait_for(
        lambda: (p := a100.read_namespaced_pod("oom", namespace)).status.phase == "Failed" and p,
        what="pod Failed",
    )
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


def test_pod_annotated_never_start_waits_in_image_pull_backoff(a100: Any, namespace: str) -> None:
    annotations = {"sim.dispatcher.dev/never-start": "ImagePullBackOff"}
    a100.create_namespaced_pod(namespace, pod("nopull", tolerate_gpu=True, annotations=annotations))

    def waiting_reason() -> str | None:
        statuses = a100.read_namespaced_pod("nopull", namespace).status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting and waiting.reason == "ImagePullBackOff" else None

    wait_for(waiting_reason, what="ImagePullBackOff")
    time.sleep(1.5)
    assert a100.read_namespaced_pod("nopull", namespace).status.phase == "Pending"


def test_container_logs_are_readable_and_followable(
    stack: Stack, a100: Any, namespace: str
) -> None:
    a100.create_namespaced_pod(namespace, pod("logger", gpus=1, tolerate_gpu=True))
    wait_for(
        lambda: a100.read_namespaced_pod("logger", namespace).status.phase == "Running",
        what="Running",
    )
    text = a100.read_namespaced_pod_log("logger", namespace)
    assert "step 3/3" in text

    marker = f"followed line {time.time_ns()}"
    seen: list[str] = []

    def follow() -> None:
        stream = a100.read_namespaced_pod_log(
            "logger", namespace, follow=True, _preload_content=False
        )
        for raw in stream.stream():
            seen.append(raw.decode())
            if marker in "".join(seen):
                stream.release_conn()
                return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(1.0)
    stack.append_container_log("gpu-a100", [marker])
    reader.join(timeout=15)
    assert marker in "".join(seen)


def test_hvac_reads_a_kubeconfig_from_kv_v2(stack_env: StackEnv) -> None:
    vault = hvac.Client(url=stack_env.vault.addr, token=stack_env.vault.root_token)
    secret = vault.secrets.kv.v2.read_secret_version(
        path=stack_env.vault.kv_paths["gpu-a100"],
        mount_point=stack_env.vault.kv_mount,
        raise_on_deleted_version=True,
    )
    kubeconfig = yaml.safe_load(secret["data"]["data"]["kubeconfig"])
    api = config.new_client_from_config_dict(kubeconfig)
    nodes = client.CoreV1Api(api).list_node().items
    assert {n.metadata.name for n in nodes} >= set(stack_env.clusters["gpu-a100"].nodes)
    # Restricted: it reads nodes and pods (capacity) but no secrets, and writes nowhere
    # outside its namespaces.
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(api).list_namespaced_secret("kube-system")
    assert denied.value.status == 403


def test_hvac_logs_in_with_kubernetes_auth_using_a_tokenrequest_token(
    stack: Stack, stack_env: StackEnv
) -> None:
    jwt = stack.service_account_token(
        "plane", stack_env.dispatcher_namespace, stack_env.dispatcher_service_account
    )
    vault = hvac.Client(url=stack_env.vault.addr)
    login = vault.auth.kubernetes.login(
        role=stack_env.vault.kubernetes_auth_role,
        jwt=jwt,
        mount_point=stack_env.vault.kubernetes_auth_mount,
    )
    assert stack_env.vault.policy in login["auth"]["policies"]
    assert (
        vault.secrets.kv.v2.read_secret_version(
            path=stack_env.vault.kv_paths["gpu-h100"],
            mount_point=stack_env.vault.kv_mount,
            raise_on_deleted_version=True,
        )["data"]["data"]["server"]
        == stack_env.clusters["gpu-h100"].server
    )


def test_kubernetes_auth_refuses_another_service_account(stack: Stack, stack_env: StackEnv) -> None:
    jwt = stack.service_account_token("plane", "kube-system", "vault-auth")
    vault = hvac.Client(url=stack_env.vault.addr)
    with pytest.raises(hvac.exceptions.VaultError):
        vault.auth.kubernetes.login(
            role=stack_env.vault.kubernetes_auth_role,
            jwt=jwt,
            mount_point=stack_env.vault.kubernetes_auth_mount,
        )


def test_approle_login_works(stack_env: StackEnv) -> None:
    vault = hvac.Client(url=stack_env.vault.addr)
    login = vault.auth.approle.login(
        role_id=stack_env.vault.approle_role_id,
        secret_id=stack_env.vault.approle_secret_id,
        mount_point=stack_env.vault.approle_mount,
    )
    assert stack_env.vault.policy in login["auth"]["policies"]


def test_kubernetes_secrets_engine_token_is_accepted_by_gpu_h100(
    stack: Stack, stack_env: StackEnv
) -> None:
    vault = hvac.Client(url=stack_env.vault.addr)
    vault.auth.approle.login(
        role_id=stack_env.vault.approle_role_id,
        secret_id=stack_env.vault.approle_secret_id,
        mount_point=stack_env.vault.approle_mount,
    )
    creds = vault.write(
        f"{stack_env.vault.kubernetes_secrets_mount}/creds/{stack_env.vault.kubernetes_secrets_role}",
        kubernetes_namespace="dispatch",
    )
    assert creds["lease_duration"] > 0
    token = creds["data"]["service_account_token"]
    with stack.kube("gpu-h100", token=token) as api:
        pods = client.CoreV1Api(api).list_namespaced_pod("dispatch")
        assert pods.items is not None
        nodes = client.CoreV1Api(api).list_node().items
        assert all(
            n.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3" for n in nodes
        )


def test_stopping_the_a100_apiserver_fails_requests_and_restarting_recovers(
    stack: Stack, faults: Any
) -> None:
    with stack.kube("gpu-a100") as api:
        core = client.CoreV1Api(api)
        assert core.list_node(_request_timeout=5).items
        faults.stop_apiserver("gpu-a100")
        with pytest.raises((HTTPError, OSError)):
            core.list_node(_request_timeout=2)
        with stack.kube("gpu-h100") as other:  # the other clusters keep working
            assert client.CoreV1Api(other).list_node(_request_timeout=5).items
        faults.start_apiserver("gpu-a100")
        assert core.list_node(_request_timeout=5).items
