"""The credentials package's public API changes only on purpose."""

from __future__ import annotations

import inspect

import pytest

import dispatcher.credentials
from dispatcher.credentials import CredentialProvider

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

EXPECTED = {
    "SERVICE_ACCOUNT_DIR",
    "ClusterApiClient",
    "CredentialProvider",
    "KVEntry",
    "KeyMaterial",
    "LeasedToken",
    "VaultSession",
    "VettedKubeconfig",
    "build_api_client",
    "parse_kubeconfig",
    "remove_all_key_material",
    "vet_kubeconfig",
    "vet_token_credentials",
}


def test_credentials_export_exactly_the_public_api() -> None:
    assert set(dispatcher.credentials.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(dispatcher.credentials, name), name


def test_the_provider_contract_other_layers_code_against() -> None:
    def parameters(name: str) -> list[str]:
        return list(inspect.signature(getattr(CredentialProvider, name)).parameters)

    assert parameters("api_client") == ["self", "cluster"]
    assert parameters("invalidate") == ["self", "cluster", "client"]
    assert parameters("expiry") == ["self", "cluster"]
    assert parameters("call") == ["self", "cluster", "fn"]
    assert parameters("close") == ["self"]
    assert parameters("refresh_due") == ["self"]
    init = inspect.signature(CredentialProvider.__init__).parameters
    assert list(init)[:3] == ["self", "settings", "vault"]
    assert init["clock"].kind is inspect.Parameter.KEYWORD_ONLY
