"""Credentials: from Vault, files or the pod to one safe Kubernetes API client per cluster.

An edge layer: it does I/O (Vault over HTTP, credential files, key material on disk) and
may import ``dispatcher.core``, ``settings``, ``metrics``, ``logging`` and ``errors``, never
``clusters``, ``dispatching`` or the interfaces.

* ``VaultSession`` (``vault.py``): login (Kubernetes auth, AppRole, token), renewal ahead of
  expiry, one re-authentication for all callers, KV v2 reads, Kubernetes secrets engine.
* ``vet_kubeconfig``/``parse_kubeconfig`` (``kubeconfig.py``): pure checks that refuse
  exec plugins, auth providers, file paths, basic auth, proxies and insecure TLS.
* ``build_api_client`` (``clients.py``): an ``ApiClient`` from vetted inline material only,
  never touching the process-global kubernetes configuration.
* ``CredentialProvider`` (``provider.py``): per-cluster cached clients, refreshed ahead of
  expiry, invalidated on 401, ``call()`` retrying once with a fresh credential.
"""

from dispatcher.credentials.clients import ClusterApiClient, build_api_client
from dispatcher.credentials.kubeconfig import (
    VettedKubeconfig,
    parse_kubeconfig,
    vet_kubeconfig,
    vet_token_credentials,
)
from dispatcher.credentials.material import KeyMaterial, remove_all_key_material
from dispatcher.credentials.provider import SERVICE_ACCOUNT_DIR, CredentialProvider
from dispatcher.credentials.vault import KVEntry, LeasedToken, VaultSession

__all__ = [
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
]
