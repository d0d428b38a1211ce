"""The Vault policy documented for the dispatcher: Vault accepts it, and it grants exactly
the reads the settings need (checked on the test stack's real Vault)."""

from __future__ import annotations

import httpx

from tests.stack import Stack, StackEnv

from .support import DEPLOY

POLICY = DEPLOY / "vault" / "kube-dispatcher-policy.hcl"
POLICY_NAME = "kd-deploy-tests-kube-dispatcher"


def test_readme_shows_the_policy_file() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert f"```hcl\n{POLICY.read_text(encoding='utf-8')}```" in readme


def test_vault_accepts_the_policy_and_it_grants_only_what_is_needed(
    stack: Stack, stack_env: StackEnv
) -> None:
    root = {"X-Vault-Token": stack_env.vault.root_token}
    with httpx.Client(base_url=stack_env.vault.addr, headers=root, timeout=10) as vault:
        response = vault.put(
            f"/v1/sys/policies/acl/{POLICY_NAME}", json={"policy": POLICY.read_text()}
        )
        assert response.status_code == 204, response.text
        token = vault.post(
            "/v1/auth/token/create",
            json={"policies": [POLICY_NAME], "ttl": "5m", "no_default_policy": True},
        ).json()["auth"]["client_token"]
        expected = {
            "secret/data/clusters/gpu-a100": ["read"],
            "secret/metadata/clusters/gpu-a100": ["list", "read"],
            "secret/data/registries/ghcr": ["read"],
            "secret/data/dependencies/api-token": ["read"],
            "secret/metadata/registries/ghcr": ["deny"],
            "kubernetes-gpu-h100/creds/dispatcher": ["update"],
            "sys/leases/revoke/kubernetes-gpu-h100/creds/dispatcher/abc": ["update"],
            "sys/leases/revoke/secret/data/clusters/x": ["deny"],
            "secret/data/other-team/db": ["deny"],
            "kubernetes-gpu-h100/creds/admin": ["deny"],
            "sys/policies/acl/kube-dispatcher": ["deny"],
            "auth/token/create": ["deny"],
        }
        answer = vault.post(
            "/v1/sys/capabilities", json={"token": token, "paths": list(expected)}
        ).json()
        assert {path: sorted(answer[path]) for path in expected} == expected
