"""A ``ClientProvider`` over the stack's restricted kubeconfigs, for tests and benchmarks.

Each ``kubernetes.client.Configuration`` is built by hand (server, CA file, bearer token
from the kubeconfig YAML), never through ``kubernetes.config``, which would change
process-global state.
"""

from __future__ import annotations

import threading
from pathlib import Path

import yaml
from kubernetes import client
from urllib3.util.retry import Retry

from dispatcher.credentials.clients import bearer_token
from tests.stack import StackEnv


class KubeconfigProvider:
    """``ClientProvider`` over the stack's restricted kubeconfigs (one client per cluster).

    ``host_override`` sends a cluster's requests elsewhere (a closed port) to break its
    connection on purpose; ``invalidations`` counts 401-driven invalidations.
    """

    def __init__(self, env: StackEnv) -> None:
        self.env = env
        self._clients: dict[str, client.ApiClient] = {}
        self._lock = threading.Lock()
        self.host_override: dict[str, str] = {}
        self.token_override: dict[str, str] = {}
        self.invalidations: list[str] = []

    def _build(self, cluster: str) -> client.ApiClient:
        spec = self.env.clusters[cluster]
        kubeconfig = yaml.safe_load(Path(spec.restricted_kubeconfig).read_text())
        conf = client.Configuration()
        conf.host = self.host_override.get(cluster, kubeconfig["clusters"][0]["cluster"]["server"])
        conf.ssl_ca_cert = spec.ca_file
        token = self.token_override.get(cluster, kubeconfig["users"][0]["user"]["token"])
        conf.api_key, conf.api_key_prefix = bearer_token(token)
        # As the service's clients: retry failed connects only, and hand every answer to the
        # caller (without raise_on_status, urllib3 turns a 429 or 503 with Retry-After into
        # MaxRetryError, which would look like no answer at all).
        conf.retries = Retry(
            total=2,
            connect=2,
            read=0,
            redirect=0,
            status=0,
            other=0,
            raise_on_redirect=False,
            raise_on_status=False,
        )
        return client.ApiClient(conf)

    def api_client(self, cluster: str) -> client.ApiClient:
        with self._lock:
            api = self._clients.get(cluster)
            if api is None:
                api = self._clients[cluster] = self._build(cluster)
            return api

    def invalidate(self, cluster: str, api: client.ApiClient) -> None:
        with self._lock:
            self.invalidations.append(cluster)
            if self._clients.get(cluster) is api:
                del self._clients[cluster]

    def reset(self, cluster: str) -> None:
        """Forget the cached client, so the next request builds one from the overrides."""
        with self._lock:
            self._clients.pop(cluster, None)
