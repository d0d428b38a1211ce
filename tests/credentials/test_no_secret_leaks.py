"""No token, JWT, kubeconfig, key or secret id reaches the logs, metrics or error messages."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from prometheus_client import generate_latest

from dispatcher.credentials import CredentialProvider, VaultSession
from dispatcher.errors import CredentialError, VaultError
from dispatcher.logging import REDACTED, get_logger, is_secret_key, redact_secrets, redact_text
from dispatcher.metrics import REGISTRY
from dispatcher.settings import ClusterSettings, Credentials, InsecureAllowances, VaultKVCredentials
from tests.credentials.conftest import (
    a100_from_kv,
    approle_auth,
    events,
    h100_from_secrets_engine,
    inline_kubeconfig,
    kubernetes_auth,
    settings_with,
)
from tests.stack import StackEnv

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleSJ9."
    "eyJpc3MiOiJrdWJlcm5ldGVzIiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50In0."
    "c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtbGVhaw"
)
PEM_KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBsecretkeybytes\n-----END EC PRIVATE KEY-----"
VAULT_TOKEN = "hvs.CAESIJ3x0y9abcdefghijklmnopqrstuvwxyz0123"


def redacted(**event: Any) -> dict[str, Any]:
    return redact_secrets(None, "info", dict(event))


# ----------------------------------------------------------------------------- unit


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "vault_token",
        "client_token",
        "secret_id",
        "password",
        "jwt",
        "kubeconfig",
        "client_key",
        "client-key-data",
        "authorization",
        "X-Vault-Token",
        "private_key",
    ],
)
def test_values_under_secret_keys_are_replaced(key: str) -> None:
    assert redacted(event="e", **{key: "harmless-looking"})[key] == REDACTED


@pytest.mark.parametrize(
    "key",
    ["token_ttl", "token_expiry", "kubeconfig_path", "cluster", "ca_pem", "generation", "accessor"],
)
def test_keys_that_only_describe_a_secret_are_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert redacted(event="e", **{key: "visible"})[key] == "visible"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (f"login with {JWT} failed", JWT),
        (f"key: {PEM_KEY} end", "secretkeybytes"),
        ("Authorization: Bearer abc.def_ghi", "abc.def_ghi"),
        ("header Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        (f"X-Vault-Token: {VAULT_TOKEN}", VAULT_TOKEN),
        ("legacy s.AbCdEfGhIjKlMnOpQrStUvWx token", "s.AbCdEfGhIjKlMnOpQrStUvWx"),
        ("users:\n- user:\n    token: plain-opaque-token\n", "plain-opaque-token"),
        ('{"secret_id": "kube-dispatcher-secret-id"}', "kube-dispatcher-secret-id"),
        ("client-key-data: LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0t", "LS0tLS1CRUdJTi"),
        ("password=hunter2 next", "hunter2"),
    ],
)
def test_secret_shapes_are_cut_out_of_any_string(text: str, leak: str) -> None:
    assert leak not in redact_text(text)
    assert leak not in json.dumps(redacted(event=text, nested={"list": [text]}))


def test_ordinary_messages_are_left_alone() -> None:
    text = "gpu-a100: Vault kv_read (secret/clusters/gpu-a100) failed with HTTP 403"
    assert redact_text(text) == text


@given(secret=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=6))
def test_any_value_under_a_secret_key_never_appears(secret: str) -> None:
    rendered = json.dumps(redacted(event="x", token=secret, nested={"password": secret}))
    assert json.dumps(secret)[1:-1] not in rendered.replace(REDACTED, "")


def test_the_configured_pipeline_redacts_structlog_stdlib_and_exceptions(
    log_output: io.StringIO,
) -> None:
    log = get_logger("dispatcher.test")
    structlog.contextvars.bind_contextvars(job_id="job-42")
    try:
        log.info("vault.login", token=VAULT_TOKEN, token_ttl=3600)
        try:
            raise VaultError(f"upstream said {JWT}")
        except VaultError:
            log.exception("vault.failed")
        logging.getLogger("urllib3.connectionpool").warning("sent Authorization: Bearer %s", JWT)
    finally:
        structlog.contextvars.clear_contextvars()
    text = log_output.getvalue()
    assert JWT not in text
    assert VAULT_TOKEN not in text
    logged = events(log_output)
    assert [e["event"] for e in logged[:2]] == ["vault.login", "vault.failed"]
    assert logged[0]["job_id"] == "job-42"
    assert logged[0]["token_ttl"] == 3600
    assert logged[0]["timestamp"].endswith("Z")
    assert "VaultError: upstream said [redacted]" in logged[1]["exception"]
    assert logged[2]["logger"] == "urllib3.connectionpool"
    assert logged[2]["event"] == "sent Authorization: Bearer [redacted]"


# ----------------------------------------------------------------------------- on the stack


def test_a_whole_credential_flow_leaks_nothing_into_logs_errors_or_metrics(
    stack_env: StackEnv, jwt_file: Path, kv_entry: Any, root_vault: Any, log_output: io.StringIO
) -> None:
    evil_token = "evil-token-ABCDEFGH-12345678"
    evil_path = kv_entry(
        inline_kubeconfig(
            stack_env.clusters["gpu-a100"].server,
            Path(stack_env.ca_file).read_text(),
            {"token": evil_token, "exec": {"command": "sh"}},
        )
    )
    vault_settings = kubernetes_auth(stack_env, jwt_file)
    session = VaultSession(vault_settings)
    evil = ClusterSettings(
        name="evil",
        credentials=Credentials(vault_kv=VaultKVCredentials(path=evil_path)),
        allow_insecure=InsecureAllowances(allow_private_addresses=True),
    )
    provider = CredentialProvider(
        settings_with(
            vault_settings, a100_from_kv(stack_env), h100_from_secrets_engine(stack_env), evil
        ),
        session,
    )
    errors: list[Exception] = []
    try:
        for cluster in ("gpu-a100", "gpu-h100"):
            provider.call(cluster, lambda api: client.CoreV1Api(api).list_node())
        with pytest.raises(CredentialError) as rejected:
            provider.api_client("evil")
        errors.append(rejected.value)
        with pytest.raises(VaultError) as forbidden:
            session.read_kv(mount="secret", path="other/x", field="x")
        errors.append(forbidden.value)
        wrong = VaultSession(approle_auth(stack_env, secret_id="wrong-secret-id-0123456789"))
        with pytest.raises(VaultError) as bad_login:
            wrong.login()
        errors.append(bad_login.value)
        wrong.close()
        approle = VaultSession(approle_auth(stack_env))
        approle.login()
        approle.close()

        secrets = {
            "kubernetes auth JWT": jwt_file.read_text(),
            "Vault token": session._token.client.token,  # type: ignore[union-attr]
            "AppRole secret id": stack_env.vault.approle_secret_id,
            "wrong secret id": "wrong-secret-id-0123456789",
            "gpu-a100 kubeconfig token": yaml.safe_load(
                root_vault.secrets.kv.v2.read_secret_version(
                    path=stack_env.vault.kv_paths["gpu-a100"],
                    mount_point="secret",
                    raise_on_deleted_version=True,
                )["data"]["data"]["kubeconfig"]
            )["users"][0]["user"]["token"],
            "gpu-h100 service account token": h100_token(provider),
            "evil kubeconfig token": evil_token,
        }
    finally:
        provider.close()
        session.close()

    logs = log_output.getvalue()
    assert {"vault.login", "credentials.fetch", "kubeconfig.rejected"} <= {
        e["event"] for e in events(log_output)
    }
    metrics = generate_latest(REGISTRY).decode()
    messages = [text for exc in errors for text in (str(exc), repr(exc))]
    for name, secret in secrets.items():
        assert secret, name
        assert secret not in logs, f"{name} in the logs"
        assert secret not in metrics, f"{name} in the metrics"
        for message in messages:
            assert secret not in message, f"{name} in an error: {message}"


def h100_token(provider: CredentialProvider) -> str:
    return str(provider.api_client("gpu-h100").configuration.api_key["authorization"])
