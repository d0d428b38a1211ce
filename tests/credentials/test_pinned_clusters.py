"""A cluster's pin and the private-address rule decide where its credential may point.

Pure unit tests of the vetting (no stack): the real stack's tests are in
``tests/e2e/test_refused_clusters.py``.
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path
from typing import Any

import pytest

from dispatcher.credentials import vet_kubeconfig, vet_token_credentials
from dispatcher.credentials.addresses import private_address
from dispatcher.credentials.kubeconfig import ca_fingerprints
from dispatcher.errors import KubeconfigRejected, RefusalReason
from dispatcher.settings import ClusterPin, InsecureAllowances
from tests.credentials.conftest import inline_kubeconfig

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

TOKEN = "kd-test-token-0123456789-DO-NOT-LEAK"
SERVER = "https://gpu-h100.example.com:6443"
# Any real certificate will do: the fingerprint is of its DER bytes.
CA_PEM = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")


def a_ca() -> str:
    text = CA_PEM.read_text()
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return text[text.index("-----BEGIN CERTIFICATE-----") : end] + "\n"


def sha256(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def refusal(config: Any, **kwargs: Any) -> KubeconfigRejected:
    with pytest.raises(KubeconfigRejected) as refused:
        vet_kubeconfig(config, cluster="gpu-h100", **kwargs)
    assert TOKEN not in str(refused.value)
    return refused.value


def test_a_kubeconfig_for_another_server_than_the_pinned_one_is_refused_with_both_urls() -> None:
    config = inline_kubeconfig("https://gpu-a100.example.com:6443", a_ca(), {"token": TOKEN})
    refused = refusal(config, pin=ClusterPin(server=SERVER))
    assert refused.refusal is RefusalReason.SERVER_MISMATCH
    assert "https://gpu-a100.example.com:6443 is not the API server pinned" in str(refused)
    assert SERVER in str(refused)


@pytest.mark.parametrize(
    "same", ["https://GPU-H100.example.com:6443/", "https://gpu-h100.example.com.:6443"]
)
def test_the_pinned_server_matches_whatever_its_case_trailing_slash_or_dot(same: str) -> None:
    config = inline_kubeconfig(same, a_ca(), {"token": TOKEN})
    assert vet_kubeconfig(config, cluster="gpu-h100", pin=ClusterPin(server=SERVER)).server == same


def test_the_default_port_is_the_same_server_and_another_port_is_not() -> None:
    pin = ClusterPin(server="https://api.example.com")
    ok = inline_kubeconfig("https://api.example.com:443", a_ca(), {"token": TOKEN})
    assert vet_kubeconfig(ok, cluster="gpu-h100", pin=pin)
    other = inline_kubeconfig("https://api.example.com:8443", a_ca(), {"token": TOKEN})
    assert refusal(other, pin=pin).refusal is RefusalReason.SERVER_MISMATCH


def test_every_ca_of_the_bundle_must_be_pinned() -> None:
    ca = a_ca()
    pin = ClusterPin(ca_sha256=sha256(ca))
    assert vet_kubeconfig(
        inline_kubeconfig(SERVER, ca, {"token": TOKEN}), cluster="gpu-h100", pin=pin
    )
    # An extra CA in the bundle would let its holder impersonate the server.
    text = CA_PEM.read_text()
    second = text.index("-----BEGIN CERTIFICATE-----", text.index("-----END CERTIFICATE-----"))
    extra = text[second : text.index("-----END CERTIFICATE-----", second) + 25] + "\n"
    refused = refusal(inline_kubeconfig(SERVER, ca + extra, {"token": TOKEN}), pin=pin)
    assert refused.refusal is RefusalReason.CA_MISMATCH
    assert f"sha256:{sha256(extra)}" in str(refused)
    assert ca_fingerprints(ca + extra) == (sha256(ca), sha256(extra))


def test_a_pinned_ca_needs_a_ca_in_the_credential() -> None:
    pin = ClusterPin(ca_sha256="ab" * 32)
    with pytest.raises(KubeconfigRejected) as refused:
        vet_token_credentials(cluster="h", server=SERVER, token=TOKEN, ca_pem=None, pin=pin)
    assert refused.value.refusal is RefusalReason.CA_MISMATCH


@pytest.mark.parametrize(
    "server",
    [
        "https://127.0.0.1:6443",
        "https://127.1:6443",
        "https://[::1]:6443",
        "https://[::ffff:127.0.0.1]",
        "https://localhost:6443",
        "https://169.254.169.254",
        "https://169.254.10.10",
        "https://[fe80::1]",
        "https://[fd00:ec2::254]",
        "https://metadata.google.internal",
        "https://0.0.0.0:6443",
    ],
)
def test_loopback_link_local_and_metadata_servers_are_refused_unless_allowed(
    server: str,
) -> None:
    config = inline_kubeconfig(server, a_ca(), {"token": TOKEN})
    refused = refusal(config)
    assert refused.refusal is RefusalReason.PRIVATE_ADDRESS
    assert "allow_private_addresses" in str(refused)
    allow = InsecureAllowances(allow_private_addresses=True)
    assert vet_kubeconfig(config, cluster="gpu-h100", allow=allow).allow_private_addresses


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.10", "gpu-h100.example.com", "8.8.8.8"])
def test_ordinary_addresses_and_names_pass(host: str) -> None:
    assert private_address(host) is None


def test_the_gravest_problem_names_the_refusal_and_every_problem_is_listed() -> None:
    config = inline_kubeconfig("https://127.0.0.1", a_ca(), {"exec": {"command": "sh"}})
    refused = refusal(config, pin=ClusterPin(server=SERVER))
    # private-address comes before exec-plugin in RefusalReason's order. (The pin is
    # judged on the chosen connection, so only once the kubeconfig is otherwise sound.)
    assert refused.refusal is RefusalReason.PRIVATE_ADDRESS
    for words in ("loopback address", "exec plugins"):
        assert words in str(refused)


def test_a_pin_fingerprint_must_be_64_hex_digits() -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        ClusterPin(ca_sha256="abc")
    assert ClusterPin(ca_sha256="SHA256:" + ":".join(["AB"] * 32)).ca_sha256 == ("ab" * 32,)
