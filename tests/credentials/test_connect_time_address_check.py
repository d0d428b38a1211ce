"""The address a connection actually reaches is judged before anything is sent (real stack).

Vetting judges the URL; a hostname may still resolve, or be rebound, to a loopback
address. Here the vetted credential claims nothing about its host (as a DNS name would),
and the stack's API server really is on 127.0.0.1: the client refuses at connect time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dispatcher.clusters import ClusterHealth, Connection, HealthPolicy
from dispatcher.core import Health
from dispatcher.credentials import parse_kubeconfig
from dispatcher.credentials.clients import build_api_client
from dispatcher.errors import ClusterUnavailable, RefusalReason, UnavailableCause
from dispatcher.settings import InsecureAllowances
from tests.stack import StackEnv

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation


class OneClient:
    def __init__(self, client: object) -> None:
        self.client = client

    def api_client(self, cluster: str) -> object:
        return self.client

    def invalidate(self, cluster: str, client: object) -> None:
        raise AssertionError("no 401 expected")


def test_a_connection_that_reaches_a_loopback_address_is_refused_before_sending(
    stack_env: StackEnv,
) -> None:
    text = Path(stack_env.clusters["gpu-h100"].restricted_kubeconfig).read_text()
    allowed = parse_kubeconfig(
        text, cluster="gpu-h100", allow=InsecureAllowances(allow_private_addresses=True)
    )
    # What vetting would return for a hostname that later resolves to 127.0.0.1.
    guarded = dataclasses.replace(allowed, allow_private_addresses=False)
    health = ClusterHealth("gpu-h100", HealthPolicy(), {}, clock=lambda: 0.0)
    client = build_api_client(guarded)
    try:
        connection = Connection("gpu-h100", OneClient(client), health=health)  # type: ignore[arg-type]
        with pytest.raises(ClusterUnavailable) as refused:
            connection.list_nodes()
    finally:
        client.close()
    assert refused.value.cause is UnavailableCause.REFUSED
    assert refused.value.refusal is RefusalReason.PRIVATE_ADDRESS
    assert "resolved to 127.0.0.1, a loopback address; nothing was sent" in str(refused.value)
    assert health.status().health is Health.REFUSED

    # The same credential with the allowance reaches the API server.
    client = build_api_client(allowed)
    try:
        assert Connection("gpu-h100", OneClient(client)).list_nodes()  # type: ignore[arg-type]
    finally:
        client.close()
