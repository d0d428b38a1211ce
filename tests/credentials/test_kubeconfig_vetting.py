"""Kubeconfig vetting refuses everything that could run a program, read a file, or weaken TLS.

Pure unit tests of ``vet_kubeconfig``/``parse_kubeconfig``: no stack needed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dispatcher.credentials import (
    VettedKubeconfig,
    parse_kubeconfig,
    vet_kubeconfig,
    vet_token_credentials,
)
from dispatcher.errors import CredentialError, KubeconfigRejected
from dispatcher.settings import InsecureAllowances
from tests.credentials.conftest import b64, inline_kubeconfig

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBclient\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIKEYSECRETMATERIAL\n-----END EC PRIVATE KEY-----\n"
TOKEN = "kd-test-token-0123456789-DO-NOT-LEAK"
SERVER = "https://gpu-a100.example.com:6443"


def good(**user: Any) -> dict[str, Any]:
    return inline_kubeconfig(SERVER, CA, user or {"token": TOKEN})


def rejected(config: Any, **kwargs: Any) -> str:
    with pytest.raises(KubeconfigRejected) as refused:
        vet_kubeconfig(config, cluster="gpu-a100", **kwargs)
    message = str(refused.value)
    assert message.startswith("gpu-a100: kubeconfig rejected: ")
    for secret in (TOKEN, "KEYSECRETMATERIAL", b64(KEY), "hunter2"):
        assert secret not in message
    return message


def with_user(**fields: Any) -> dict[str, Any]:
    config = good()
    config["users"][0]["user"].update(fields)
    return config


def with_cluster(**fields: Any) -> dict[str, Any]:
    config = good()
    config["clusters"][0]["cluster"].update(fields)
    return config


def test_an_inline_token_kubeconfig_is_accepted_whole() -> None:
    vetted = vet_kubeconfig(good(), cluster="gpu-a100")
    assert vetted == VettedKubeconfig(
        cluster="gpu-a100", server=SERVER, ca_pem=CA, token=TOKEN, namespace="dispatch"
    )
    assert TOKEN not in repr(vetted)


def test_an_inline_client_certificate_kubeconfig_is_accepted_and_keeps_the_key_out_of_repr() -> (
    None
):
    vetted = vet_kubeconfig(
        good(**{"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)}),
        cluster="gpu-a100",
    )
    assert (vetted.client_cert_pem, vetted.client_key_pem, vetted.token) == (CERT, KEY, None)
    assert vetted.uses_client_certificate
    assert "PRIVATE KEY" not in repr(vetted)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "touch"}},
            "users[0].user.exec is refused: exec plugins would run a program",
        ),
        (
            {"auth-provider": {"name": "gcp", "config": {"cmd-path": "/bin/sh"}}},
            "users[0].user.auth-provider is refused",
        ),
        ({"tokenFile": "/etc/secret-token"}, "users[0].user.tokenFile is refused"),
        ({"client-certificate": "/etc/client.crt"}, "users[0].user.client-certificate is refused"),
        ({"client-key": "/etc/client.key"}, "users[0].user.client-key is refused"),
        ({"username": "admin", "password": "hunter2"}, "basic authentication is not supported"),
        ({"as": "system:admin"}, "users[0].user.as is refused: impersonation"),
        ({"something-new": True}, "users[0].user.something-new is refused: unknown user field"),
    ],
)
def test_user_fields_that_run_programs_read_files_or_send_passwords_are_refused(
    fields: dict[str, Any], expected: str
) -> None:
    assert expected in rejected(with_user(**fields))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"certificate-authority": "/etc/ca.crt"}, "clusters[0].cluster.certificate-authority"),
        ({"proxy-url": "http://proxy:3128"}, "clusters[0].cluster.proxy-url is refused: proxies"),
        ({"server": "http://gpu-a100.example.com"}, "plain http:// would send the credential"),
        ({"server": "ftp://gpu-a100.example.com"}, "must be an https:// URL"),
        ({"server": "https://user:hunter2@gpu-a100"}, "a URL must not carry credentials"),
        ({"server": "https:///nohost"}, "has no host"),
        ({"insecure-skip-tls-verify": True}, "TLS verification cannot be skipped"),
        ({"certificate-authority-data": "not base64!"}, "is not valid base64"),
        ({"certificate-authority-data": b64("hello")}, "must hold PEM certificates"),
        ({"unknown": 1}, "clusters[0].cluster.unknown is refused: unknown cluster field"),
    ],
)
def test_cluster_fields_that_read_files_or_weaken_tls_are_refused(
    fields: dict[str, Any], expected: str
) -> None:
    assert expected in rejected(with_cluster(**fields))


def test_http_and_skipping_tls_verification_pass_only_when_the_cluster_allows_them() -> None:
    config = with_cluster(server="http://gpu-a100.example.com:8080")
    vetted = vet_kubeconfig(config, cluster="t", allow=InsecureAllowances(allow_http=True))
    assert vetted.server == "http://gpu-a100.example.com:8080"

    config = with_cluster(**{"insecure-skip-tls-verify": True})
    del config["clusters"][0]["cluster"]["certificate-authority-data"]
    allow = InsecureAllowances(allow_insecure_skip_tls_verify=True)
    assert vet_kubeconfig(config, cluster="t", allow=allow).insecure_skip_tls_verify
    # With a CA as well it is ambiguous; kubectl refuses it too.
    ambiguous = with_cluster(**{"insecure-skip-tls-verify": True})
    assert "cannot be combined" in rejected(ambiguous, allow=allow)


def test_a_dangerous_entry_is_refused_even_when_the_chosen_context_does_not_use_it() -> None:
    config = good()
    config["users"].append({"name": "other", "user": {"exec": {"command": "sh"}}})
    assert "users[1].user.exec is refused" in rejected(config)


def test_every_problem_is_listed_in_one_rejection() -> None:
    config = with_user(exec={"command": "sh"}, tokenFile="/x")
    config["clusters"][0]["cluster"]["proxy-url"] = "http://p"
    message = rejected(config)
    assert "users[0].user.exec" in message
    assert "users[0].user.tokenFile" in message
    assert "clusters[0].cluster.proxy-url" in message


def test_contexts_must_exist_and_point_at_existing_entries() -> None:
    assert "names context 'nope', which does not exist (known: ctx)" in rejected(
        good(), context="nope"
    )
    missing_current = good()
    del missing_current["current-context"]
    assert "current-context is missing" in rejected(missing_current)
    dangling = good()
    dangling["contexts"][0]["context"]["user"] = "ghost"
    assert "names user 'ghost', which does not exist" in rejected(dangling)
    duplicate = good()
    duplicate["users"].append(copy.deepcopy(duplicate["users"][0]))
    assert "users[1].name duplicates users[0].user.name" in rejected(duplicate)


def test_a_context_can_be_chosen_by_name() -> None:
    config = good()
    config["contexts"].append(
        {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "elsewhere"}}
    )
    assert vet_kubeconfig(config, cluster="t", context="other").namespace == "elsewhere"


def test_a_user_needs_a_credential_and_a_certificate_needs_its_key() -> None:
    assert "has no credential" in rejected(good(extensions=[]))
    lonely = good(**{"client-certificate-data": b64(CERT)})
    assert "users[0].user.client-key-data is missing" in rejected(lonely)
    bad_key = good(**{"client-certificate-data": b64(CERT), "client-key-data": b64(CERT)})
    assert "must hold a PEM private key" in rejected(bad_key)
    assert "must be a non-empty token" in rejected(good(token="two words"))


def test_broken_yaml_reports_the_position_but_not_the_line() -> None:
    text = f"users:\n- name: u\n  user:\n    token: {TOKEN}\n\t bad: [\n"
    with pytest.raises(KubeconfigRejected) as refused:
        parse_kubeconfig(text, cluster="gpu-a100")
    assert "not valid YAML at line" in str(refused.value)
    assert TOKEN not in str(refused.value)
    assert refused.value.__cause__ is None


@pytest.mark.parametrize("document", ["[]", "just text", "kind: Secret\n"])
def test_documents_that_are_not_kubeconfigs_are_refused(document: str) -> None:
    with pytest.raises(KubeconfigRejected):
        parse_kubeconfig(document, cluster="gpu-a100")


def test_a_kubeconfig_rejection_is_a_credential_error_naming_the_cluster() -> None:
    with pytest.raises(CredentialError) as refused:
        vet_kubeconfig(with_user(exec={"command": "sh"}), cluster="gpu-h100")
    assert refused.value.cluster == "gpu-h100"


def test_token_credentials_from_the_secrets_engine_are_vetted_too() -> None:
    vetted = vet_token_credentials(cluster="h", server=SERVER, token=TOKEN, ca_pem=CA)
    assert vetted.token == TOKEN
    with pytest.raises(KubeconfigRejected, match="plain http"):
        vet_token_credentials(cluster="h", server="http://x", token=TOKEN, ca_pem=None)
    with pytest.raises(KubeconfigRejected, match="token must be"):
        vet_token_credentials(cluster="h", server=SERVER, token="a\nb", ca_pem=None)
