"""The dispatcher's settings for a running test stack (used by the e2e tests and the demo).

``plane`` is reached with a kubeconfig file (the dispatcher's own identity), ``gpu-a100``
through a kubeconfig in Vault KV v2, ``gpu-h100`` through short-lived tokens from Vault's
Kubernetes secrets engine; the dispatcher logs in to Vault with Kubernetes auth using a
ServiceAccount token from the TokenRequest API, as it would in a pod.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from tests.support import ADMIN_TOKEN

from .launcher import DISPATCHER_NAMESPACE, DISPATCHER_SA, Stack

#: The audience of ServiceAccount tokens the test dispatcher accepts (TokenReview).
AUDIENCE = "kube-dispatcher"


def default_auth() -> dict[str, Any]:
    """``service.auth`` of the test dispatcher: the ``admin`` tenant's static token, and
    ServiceAccount tokens of ``plane`` for ``AUDIENCE``."""
    return {
        "static_tokens": [
            {"sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(), "tenant": "admin"}
        ],
        "token_review": {"audience": AUDIENCE},
    }


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def dispatcher_settings(
    stack: Stack,
    folder: Path,
    *,
    namespace: str = "dispatch",
    service: dict[str, Any] | None = None,
    client: dict[str, Any] | None = None,
    clusters: dict[str, dict[str, Any]] | None = None,
    tenants: dict[str, dict[str, Any]] | None = None,
    fair_share: dict[str, Any] | None = None,
) -> Path:
    """Write a settings file (and the Vault login JWT) into ``folder``; return its path.

    ``fair_share``: the ``fair_share`` section (docs/fair-share.md), when given.
    ``clusters`` adds settings to the named clusters (e.g. an ``on_unreachable`` policy);
    ``tenants`` adds tenants to ``admin`` (role admin; its token is ``ADMIN_TOKEN``).
    ``service`` may replace ``auth`` (``default_auth()``).
    """
    env = stack.env()
    stack.allow_token_reviews()
    folder.mkdir(parents=True, exist_ok=True)
    jwt = folder / "vault-jwt"
    jwt.write_text(
        stack.service_account_token("plane", DISPATCHER_NAMESPACE, DISPATCHER_SA, seconds=24 * 3600)
    )
    jwt.chmod(0o600)
    h100 = env.clusters["gpu-h100"]
    settings: dict[str, Any] = {
        "clusters": [
            {
                "name": "plane",
                "role": "in-plane",
                "credentials": {
                    "kubeconfig_file": {"path": env.clusters["plane"].restricted_kubeconfig}
                },
                "labels": {"topology.kubernetes.io/region": env.clusters["plane"].region},
                "cost": {"cpu_hour": 0.031, "memory_gib_hour": 0.004},
                "pod_defaults": {"namespace": namespace},
            },
            {
                "name": "gpu-a100",
                "credentials": {
                    "vault_kv": {
                        "mount": env.vault.kv_mount,
                        "path": env.vault.kv_paths["gpu-a100"],
                        "field": "kubeconfig",
                    }
                },
                "labels": {"topology.kubernetes.io/region": env.clusters["gpu-a100"].region},
                "cost": {
                    "cpu_hour": 0.031,
                    "memory_gib_hour": 0.004,
                    "gpu_hour": {"NVIDIA-A100-SXM4-80GB": 2.75},
                },
                "pod_defaults": {"namespace": namespace, "gpu_tolerations": [GPU_TOLERATION]},
            },
            {
                "name": "gpu-h100",
                "credentials": {
                    "vault_kubernetes_secrets": {
                        "mount": env.vault.kubernetes_secrets_mount,
                        "role": env.vault.kubernetes_secrets_role,
                        "kubernetes_namespace": "dispatch",
                        "server": h100.server,
                        "ca_from_kv": {
                            "mount": env.vault.kv_mount,
                            "path": env.vault.kv_paths["gpu-h100"],
                            "field": "ca",
                        },
                        "ttl_seconds": 3600,
                    }
                },
                "labels": {"topology.kubernetes.io/region": h100.region},
                "cost": {
                    "cpu_hour": 0.045,
                    "memory_gib_hour": 0.006,
                    "gpu_hour": {"NVIDIA-H100-80GB-HBM3": 4.9},
                },
                "pod_defaults": {"namespace": namespace, "gpu_tolerations": [GPU_TOLERATION]},
            },
        ],
        "vault": {
            "url": env.vault.addr,
            "allow_http": True,
            "auth": {
                "kubernetes": {
                    "role": env.vault.kubernetes_auth_role,
                    "mount": env.vault.kubernetes_auth_mount,
                    "jwt_path": str(jwt),
                }
            },
        },
        "tenants": {"admin": {"role": "admin"}, **(tenants or {})},
        "service": {
            "auth": default_auth(),
            # Each test's dispatcher keeps its job records apart from the others'.
            "state_namespace": namespace,
            # Tests watch cleanups happen; the product default leaves logs readable 30 s.
            "finished_pod_linger_seconds": 1,
            "log_json": True,
            **(service or {}),
        },
    }
    if fair_share is not None:
        settings["fair_share"] = fair_share
    for cluster in settings["clusters"]:
        cluster["client"] = dict(client or {})
        # The stack's API servers listen on 127.0.0.1, which production refuses.
        cluster["allow_insecure"] = {"allow_private_addresses": True}
        cluster.update((clusters or {}).get(cluster["name"], {}))
    path = folder / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path
