"""A cluster whose credential our rules refuse says so, and costs nothing (real stack).

gpu-h100 reads its kubeconfig from Vault KV here (``clusters/gpu-h100``, field
``kubeconfig``), so a test can write a bad one there as an attacker with write access to
that path would. Judged from outside: the API's cluster view, ``/metrics``, the admin view
of both GPU clusters (nothing created) and Vault's own audit log (how often it was read).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
import yaml
from kubernetes import client

from tests.stack import Stack, StackEnv
from tests.support import ServiceProcess, task, wait_until

H100 = "gpu-h100"


@pytest.fixture
def vault(stack_env: StackEnv) -> hvac.Client:
    return hvac.Client(url=stack_env.vault.addr, token=stack_env.vault.root_token)


@pytest.fixture
def audit_log(vault: hvac.Client, stack: Stack) -> Path:
    """Vault's file audit device (enabled once per stack): every request it served."""
    devices = vault.sys.list_enabled_audit_devices()["data"]
    if "file/" in devices:
        return Path(devices["file/"]["options"]["file_path"])
    path = Path(stack.state_dir) / "vault-audit.log"
    vault.sys.enable_audit_device("file", options={"file_path": str(path)})
    return path


@pytest.fixture
def h100_kv(vault: hvac.Client, stack_env: StackEnv) -> Iterator[dict[str, Any]]:
    """What Vault holds for gpu-h100 (restored after the test)."""
    path, mount = stack_env.vault.kv_paths[H100], stack_env.vault.kv_mount
    good = vault.secrets.kv.v2.read_secret_version(
        path=path, mount_point=mount, raise_on_deleted_version=False
    )["data"]["data"]
    # The stack's own copy, not what an interrupted test may have left in Vault.
    good["kubeconfig"] = Path(stack_env.clusters[H100].restricted_kubeconfig).read_text()
    yield dict(good)
    vault.secrets.kv.v2.create_or_update_secret(path=path, mount_point=mount, secret=good)


def write_h100_kubeconfig(
    vault: hvac.Client, stack_env: StackEnv, good: dict[str, Any], kubeconfig: str
) -> None:
    vault.secrets.kv.v2.create_or_update_secret(
        path=stack_env.vault.kv_paths[H100],
        mount_point=stack_env.vault.kv_mount,
        secret={**good, "kubeconfig": kubeconfig},
    )


def h100_from_kv(stack_env: StackEnv, **settings: Any) -> dict[str, dict[str, Any]]:
    """Service settings: gpu-h100's kubeconfig from Vault KV, plus ``settings``."""
    kv = {"mount": stack_env.vault.kv_mount, "path": stack_env.vault.kv_paths[H100]}
    return {H100: {"credentials": {"vault_kv": {**kv, "field": "kubeconfig"}}, **settings}}


def ca_sha256(kubeconfig: str) -> str:
    data = yaml.safe_load(kubeconfig)["clusters"][0]["cluster"]["certificate-authority-data"]
    der = ssl.PEM_cert_to_DER_cert(base64.b64decode(data).decode())
    return hashlib.sha256(der).hexdigest()


def started(service_factory: Any, **kwargs: Any) -> tuple[ServiceProcess, float]:
    begun = time.monotonic()
    service = service_factory(**kwargs)
    return service, time.monotonic() - begun


def cluster(service: ServiceProcess, name: str) -> dict[str, Any]:
    with service.client() as api:
        return next(c for c in api.clusters() if c["name"] == name)


def refused_metric(service: ServiceProcess, name: str) -> dict[str, float]:
    text = httpx.get(f"{service.url}/metrics").text
    pattern = re.compile(
        rf'^dispatcher_cluster_refused\{{cluster="{name}",reason="([a-z-]+)"\}} (\S+)$', re.M
    )
    return {reason: float(value) for reason, value in pattern.findall(text)}


def pods(stack: Stack, name: str, namespace: str) -> list[str]:
    with stack.kube(name) as api:
        return [p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items]


def h100_reads(audit: Path, path: str) -> list[float]:
    """When Vault answered a read of ``path`` (its audit log's response entries)."""
    times = []
    if not audit.exists():
        return times
    for line in audit.read_text().splitlines():
        entry = json.loads(line)
        request = entry.get("request") or {}
        if (
            entry.get("type") == "response"
            and request.get("operation") == "read"
            and request.get("path", "").endswith(f"data/{path}")
        ):
            stamp = entry["time"]
            whole, _, fraction = stamp.rstrip("Z").partition(".")
            seconds = time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) - time.timezone
            times.append(seconds + float(f"0.{fraction or 0}"))
    return times


def test_a_kubeconfig_redirected_to_another_cluster_is_refused_and_creates_nothing(
    service_factory: Any,
    stack: Stack,
    stack_env: StackEnv,
    namespace: str,
    vault: hvac.Client,
    h100_kv: dict[str, Any],
) -> None:
    # gpu-a100's own, valid kubeconfig under gpu-h100's path: without the pin, pods meant
    # for gpu-h100 (and the secrets they carry) would be created in gpu-a100.
    a100 = stack_env.clusters["gpu-a100"]
    write_h100_kubeconfig(vault, stack_env, h100_kv, Path(a100.restricted_kubeconfig).read_text())
    pin = {"server": stack_env.clusters[H100].server}
    service, ready_after = started(service_factory, clusters=h100_from_kv(stack_env, pin=pin))

    view = cluster(service, H100)
    assert view["health"] == "refused"
    assert view["refusal"]["reason"] == "server-mismatch"
    assert a100.server in view["refusal"]["message"]
    assert pin["server"] in view["refusal"]["message"]
    assert refused_metric(service, H100)["server-mismatch"] == 1
    assert sum(refused_metric(service, H100).values()) == 1
    assert sum(refused_metric(service, "gpu-a100").values()) == 0
    # The refused cluster does not hold readiness for the 30 s sync timeout.
    assert ready_after < 15, ready_after

    only_h100 = task("only-h100", gpus=1, requirements={"allowed_clusters": [H100]}, annotations={})
    with service.client() as api:
        job, _ = api.submit(only_h100)
        explained = api.explain({**only_h100, "idempotency_key": "explain-only-h100"})
    assert job["state"] == "rejected", job
    assert f"{H100}: refused: server-mismatch: " in job["reason"], job
    verdict = next(c for c in explained["clusters"] if c["cluster"] == H100)
    assert (verdict["verdict"], verdict["reason"]) == ("reject", "cluster-refused")
    assert verdict["message"].startswith("refused: server-mismatch: ")
    # Rejected is final and decided before anything is created: neither cluster has a pod.
    assert pods(stack, H100, namespace) == []
    assert pods(stack, "gpu-a100", namespace) == []


def test_a_ca_other_than_the_pinned_one_is_refused_and_the_pinned_one_passes(
    service_factory: Any, stack_env: StackEnv, h100_kv: dict[str, Any]
) -> None:
    # The stack signs every API server with one CA, so "another CA" is a fingerprint
    # nobody's certificate has (an attacker's CA would be just as unknown to the pin).
    other_ca = hashlib.sha256(b"the CA of some other cluster").hexdigest()
    h100_ca = ca_sha256(h100_kv["kubeconfig"])

    wrong = service_factory(clusters=h100_from_kv(stack_env, pin={"ca_sha256": other_ca}))
    view = cluster(wrong, H100)
    assert (view["health"], view["refusal"]["reason"]) == ("refused", "ca-mismatch"), view
    assert f"sha256:{h100_ca}" in view["refusal"]["message"]
    assert refused_metric(wrong, H100)["ca-mismatch"] == 1

    right = service_factory(
        clusters=h100_from_kv(
            stack_env,
            pin={
                "ca_sha256": f"SHA256:{h100_ca.upper()}",
                "server": stack_env.clusters[H100].server,
            },
        )
    )
    assert cluster(right, H100)["health"] == "up"
    assert sum(refused_metric(right, H100).values()) == 0


def test_loopback_api_servers_are_refused_unless_the_cluster_allows_them(
    service_factory: Any,
) -> None:
    # The stack's API servers listen on 127.0.0.1; its settings allow that. Take it back.
    service = service_factory(
        clusters={H100: {"allow_insecure": {"allow_private_addresses": False}}}
    )
    view = cluster(service, H100)
    assert (view["health"], view["refusal"]["reason"]) == ("refused", "private-address"), view
    assert "127.0.0.1 is a loopback address" in view["refusal"]["message"]
    assert refused_metric(service, H100)["private-address"] == 1
    assert cluster(service, "gpu-a100")["health"] == "up"


def test_a_refused_credential_is_read_again_with_backoff_and_a_fix_is_picked_up(
    service_factory: Any,
    stack_env: StackEnv,
    vault: hvac.Client,
    h100_kv: dict[str, Any],
    audit_log: Path,
) -> None:
    bad = yaml.safe_load(h100_kv["kubeconfig"])
    bad["users"][0]["user"] = {"exec": {"command": "/bin/sh", "apiVersion": "v1"}}
    write_h100_kubeconfig(vault, stack_env, h100_kv, yaml.safe_dump(bad))
    path = stack_env.vault.kv_paths[H100]
    before = len(h100_reads(audit_log, path))
    retry = {"base_seconds": 1, "max_seconds": 4, "jitter": 0}
    service = service_factory(clusters=h100_from_kv(stack_env, refused_retry=retry))
    assert cluster(service, H100)["refusal"]["reason"] == "exec-plugin"

    # Three informers keep asking for a client; Vault is read only once the backoff has
    # passed (1, 2, 4, 4 s here), whoever asks and however often.
    wait_until(lambda: len(h100_reads(audit_log, path)) - before >= 5, timeout=90)
    reads = h100_reads(audit_log, path)[before:]
    gaps = [b - a for a, b in itertools.pairwise(reads)][:4]
    assert all(gap >= least - 0.3 for gap, least in zip(gaps, (1, 2, 4, 4), strict=True)), gaps

    write_h100_kubeconfig(vault, stack_env, h100_kv, h100_kv["kubeconfig"])
    # Picked up at the next informer retry (their backoff is capped at 30 s, +50% jitter).
    wait_until(lambda: cluster(service, H100)["health"] == "up", timeout=60)
    assert sum(refused_metric(service, H100).values()) == 0
