"""Shared pieces of the credential tests: Vault settings for each auth method, a clock
tests can move, counters of Vault requests, and captured log output."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
import structlog
import yaml

from dispatcher.logging import configure_logging
from dispatcher.metrics import sample_value
from dispatcher.settings import (
    ClusterSettings,
    Credentials,
    InsecureAllowances,
    KubeconfigFileCredentials,
    Settings,
    VaultAppRoleAuth,
    VaultAuth,
    VaultKubernetesAuth,
    VaultKubernetesSecretsCredentials,
    VaultKVCredentials,
    VaultKVRef,
    VaultSettings,
    VaultTokenAuth,
)
from tests.stack import Stack, StackEnv


@pytest.fixture(autouse=True)
def _no_dispatcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("DISPATCHER_", "VAULT_")):
            monkeypatch.delenv(name)


class Clock:
    """Real time plus an offset that a test moves forward (servers keep real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def vault_requests(operation: str, outcome: str = "ok") -> float:
    return sample_value(
        "dispatcher_vault_requests_total", {"operation": operation, "outcome": outcome}
    )


class Counter:
    """Deltas of Vault request counters since the counter was made.

    ``counter["login"]`` counts successful logins, ``counter["lookup", "denied"]`` refusals.
    """

    operations = ("login", "renew", "lookup", "kv_read", "kubernetes_creds")
    outcomes = ("ok", "denied", "not_found", "unavailable", "error")

    def __init__(self) -> None:
        self._start = {
            (op, outcome): vault_requests(op, outcome)
            for op in self.operations
            for outcome in self.outcomes
        }

    def __getitem__(self, key: str | tuple[str, str]) -> int:
        operation, outcome = (key, "ok") if isinstance(key, str) else key
        return int(vault_requests(operation, outcome) - self._start[operation, outcome])


@pytest.fixture
def jwt_file(stack: Stack, stack_env: StackEnv, tmp_path: Path) -> Path:
    """The dispatcher's service account token in `plane`, where a pod would have it."""
    token = stack.service_account_token(
        "plane", stack_env.dispatcher_namespace, stack_env.dispatcher_service_account
    )
    path = tmp_path / "sa-token"
    path.write_text(token)
    return path


@pytest.fixture
def root_vault(stack_env: StackEnv) -> hvac.Client:
    return hvac.Client(url=stack_env.vault.addr, token=stack_env.vault.root_token)


def kubernetes_auth(
    stack_env: StackEnv, jwt_path: Path, *, renew_ahead_fraction: float = 0.25
) -> VaultSettings:
    return VaultSettings(
        allow_http=True,
        url=stack_env.vault.addr,
        auth=VaultAuth(
            kubernetes=VaultKubernetesAuth(
                role=stack_env.vault.kubernetes_auth_role,
                mount=stack_env.vault.kubernetes_auth_mount,
                jwt_path=jwt_path,
            )
        ),
        renew_ahead_fraction=renew_ahead_fraction,
    )


def approle_auth(
    stack_env: StackEnv,
    *,
    role_id: str | None = None,
    secret_id: str | None = None,
    renew_ahead_fraction: float = 0.25,
) -> VaultSettings:
    return VaultSettings(
        allow_http=True,
        url=stack_env.vault.addr,
        auth=VaultAuth(
            approle=VaultAppRoleAuth(
                role_id=role_id or stack_env.vault.approle_role_id,
                secret_id=secret_id or stack_env.vault.approle_secret_id,
                mount=stack_env.vault.approle_mount,
            )
        ),
        renew_ahead_fraction=renew_ahead_fraction,
        read_timeout_seconds=5,
        connect_timeout_seconds=2,
    )


def token_auth(
    stack_env: StackEnv, token: str, *, renew_ahead_fraction: float = 0.25
) -> VaultSettings:
    return VaultSettings(
        allow_http=True,
        url=stack_env.vault.addr,
        auth=VaultAuth(token=VaultTokenAuth(token=token)),
        renew_ahead_fraction=renew_ahead_fraction,
    )


def a100_from_kv(stack_env: StackEnv, **kv: Any) -> ClusterSettings:
    return ClusterSettings(
        name="gpu-a100",
        credentials=Credentials(
            vault_kv=VaultKVCredentials(path=stack_env.vault.kv_paths["gpu-a100"], **kv)
        ),
        allow_insecure=InsecureAllowances(allow_private_addresses=True),
    )


def h100_from_secrets_engine(stack_env: StackEnv, ttl_seconds: int = 600) -> ClusterSettings:
    return ClusterSettings(
        name="gpu-h100",
        credentials=Credentials(
            vault_kubernetes_secrets=VaultKubernetesSecretsCredentials(
                mount=stack_env.vault.kubernetes_secrets_mount,
                role=stack_env.vault.kubernetes_secrets_role,
                kubernetes_namespace="dispatch",
                server=stack_env.clusters["gpu-h100"].server,
                ca_from_kv=VaultKVRef(path=stack_env.vault.kv_paths["gpu-h100"], field="ca"),
                ttl_seconds=ttl_seconds,
            )
        ),
        allow_insecure=InsecureAllowances(allow_private_addresses=True),
    )


def from_file(name: str, path: Path, **extra: Any) -> ClusterSettings:
    return ClusterSettings(
        name=name,
        credentials=Credentials(kubeconfig_file=KubeconfigFileCredentials(path=path)),
        **{"allow_insecure": InsecureAllowances(allow_private_addresses=True), **extra},
    )


def settings_with(vault: VaultSettings | None, *clusters: ClusterSettings) -> Settings:
    return Settings(vault=vault, clusters=clusters)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def inline_kubeconfig(
    server: str,
    ca_pem: str,
    user: dict[str, Any],
    *,
    cluster_extra: dict[str, Any] | None = None,
    context: str = "ctx",
) -> dict[str, Any]:
    """A kubeconfig with one cluster, user and context; ``user`` is the user's body."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": b64(ca_pem),
                    **(cluster_extra or {}),
                },
            }
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": context, "context": {"cluster": "c", "user": "u", "namespace": "dispatch"}}
        ],
        "current-context": context,
    }


@pytest.fixture
def kv_entry(root_vault: hvac.Client, stack_env: StackEnv) -> Iterator[Any]:
    """Write kubeconfigs to fresh KV paths under clusters/ (readable by the dispatcher)."""
    written: list[str] = []

    def put(kubeconfig: dict[str, Any] | str) -> str:
        path = f"clusters/test-{uuid.uuid4().hex[:8]}"
        text = kubeconfig if isinstance(kubeconfig, str) else yaml.safe_dump(kubeconfig)
        root_vault.secrets.kv.v2.create_or_update_secret(
            path=path, mount_point=stack_env.vault.kv_mount, secret={"kubeconfig": text}
        )
        written.append(path)
        return path

    yield put
    for path in written:
        root_vault.secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point=stack_env.vault.kv_mount
        )


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything the dispatcher logs during the test, as the JSON lines it would write."""
    from dispatcher.logging import _DispatcherHandler

    out = io.StringIO()
    configure_logging(json=True, level="debug", stream=out)
    yield out
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _DispatcherHandler)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
