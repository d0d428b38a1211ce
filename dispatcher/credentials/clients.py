"""Kubernetes API clients built from vetted credentials only.

``build_api_client`` turns a ``VettedKubeconfig`` into a ``ClusterApiClient`` with its own
``Configuration``: the process-wide default configuration is never read or changed, and
``kubernetes.config`` (which would follow exec plugins and file paths) is never used.

* TLS is always verified (unless the cluster explicitly allows skipping it); the CA is
  passed in memory (``ca_cert_data``, 37.x), so only a client certificate and key touch
  the disk (and, up to 36.x, which takes no CA in memory, the CA), in a private
  ``KeyMaterial`` directory removed when the client is closed and no request of it is in
  flight.
* A closed client (its credential was replaced) answers every new request with a 401
  (reason ``ClientReplaced``) without sending it, so callers take the current client as
  they do after a rotation, instead of failing on key files already removed.
* Every request gets the cluster's connect/read timeouts unless the caller passes
  ``_request_timeout`` itself (watches pass their own, longer read timeout).
* urllib3 retries only failed connects, never a read (a POST must not be sent twice) and
  follows no redirects (the bearer token must not be sent elsewhere).
* Unless the cluster allows private addresses, every new connection's peer address is
  judged (``addresses.private_address``) right after the TCP connect and before TLS or any
  byte is sent: a hostname that resolves, or re-resolves (DNS rebinding), to a loopback,
  link-local or metadata address is refused with ``KubeconfigRejected``
  (``private-address``), which urllib3 does not retry.

I/O: writes key material files; network I/O happens when the returned client is used.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import urllib3
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.retry import Retry

from dispatcher.credentials.addresses import private_address
from dispatcher.credentials.kubeconfig import VettedKubeconfig
from dispatcher.credentials.material import KeyMaterial
from dispatcher.errors import KubeconfigRejected, RefusalReason
from dispatcher.settings import ClientSettings

__all__ = ["ClusterApiClient", "bearer_token", "build_api_client"]

_CONNECT_RETRIES = 2

#: The reason of the 401 a closed client answers with, without sending the request.
CLIENT_REPLACED = "ClientReplaced"


class ClusterApiClient(ApiClient):  # type: ignore[misc,unused-ignore]  # Any before 37.x
    """An ``ApiClient`` for one cluster: default timeouts, and it owns its key material."""

    def __init__(
        self,
        configuration: Configuration,
        *,
        cluster: str,
        timeout: tuple[float, float],
        material: KeyMaterial | None = None,
    ) -> None:
        super().__init__(configuration)
        self.cluster = cluster
        self.default_timeout = timeout
        self._material = material
        self.closed = False
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def key_dir(self) -> Path | None:
        """The private directory holding this client's certificate and key, if any."""
        return self._material.path if self._material is not None else None

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        # The one method every request of the generated client goes through. Its
        # signature differs between client generations (37.x: method, url, headers,
        # body...; up to 36.x: path, method, path and query params...); both pass
        # ``_request_timeout`` by keyword.
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = self.default_timeout
        with self._lock:
            if self.closed:
                raise ApiException(status=401, reason=CLIENT_REPLACED)
            self._in_flight += 1
        try:
            return super().call_api(*args, **kwargs)
        finally:
            with self._lock:
                self._in_flight -= 1
                last = self._retired()
            if last:
                self._remove_material()

    def close(self) -> None:
        """Close the connection pools; delete the key material now, or when the last
        request in flight ends (idempotent). Later requests get a 401 (``ClientReplaced``)."""
        with self._lock:
            self.closed = True
            idle = self._in_flight == 0
        try:
            super().close()  # type: ignore[no-untyped-call,unused-ignore]
        finally:
            if idle:
                self._remove_material()

    def _retired(self) -> bool:
        """Closed, and no request in flight (under the lock)."""
        return self.closed and self._in_flight == 0

    def _remove_material(self) -> None:
        if self._material is not None:
            self._material.remove()

    def __repr__(self) -> str:
        return f"<ClusterApiClient {self.cluster} {self.configuration.host}>"


def _judge_peer(sock: socket.socket, host: str, cluster: str) -> socket.socket:
    try:
        peer = str(sock.getpeername()[0])
    except OSError:
        sock.close()
        raise
    why = private_address(peer)
    if why is None:
        return sock
    sock.close()
    raise KubeconfigRejected(
        f"the API server host {host} resolved to {peer}, {why}; nothing was sent (set "
        "allow_insecure.allow_private_addresses: true for a test cluster that really "
        "listens there)",
        cluster=cluster,
        refusal=RefusalReason.PRIVATE_ADDRESS,
    )


class _GuardedHTTPConnection(HTTPConnection):
    cluster = ""

    def _new_conn(self) -> socket.socket:
        return _judge_peer(super()._new_conn(), self.host, self.cluster)


class _GuardedHTTPSConnection(HTTPSConnection):
    cluster = ""

    def _new_conn(self) -> socket.socket:
        return _judge_peer(super()._new_conn(), self.host, self.cluster)


def _guard_addresses(client: ApiClient, cluster: str) -> None:
    """Make every connection of ``client`` judge its peer address before sending."""
    http = type("GuardedHTTPConnection", (_GuardedHTTPConnection,), {"cluster": cluster})
    https = type("GuardedHTTPSConnection", (_GuardedHTTPSConnection,), {"cluster": cluster})
    pools = {
        "http": type("GuardedHTTPPool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("GuardedHTTPSPool", (urllib3.HTTPSConnectionPool,), {"ConnectionCls": https}),
    }
    manager = client.rest_client.pool_manager
    manager.clear()
    # An instance attribute of its own: the module-level default dict stays untouched.
    manager.pool_classes_by_scheme = pools


def bearer_token(token: str) -> tuple[dict[str, str], dict[str, str]]:
    """``Configuration.api_key`` and ``api_key_prefix`` that send ``Bearer <token>`` with
    every client generation: up to 35.x it is read under ``authorization``; 36.x reads
    it under ``BearerToken`` (``authorization`` only as an alias of the key, not of its
    prefix, so the header lacked "Bearer" and the apiserver saw an anonymous user); 37.x
    reads either."""
    keys = ("BearerToken", "authorization")
    return dict.fromkeys(keys, token), dict.fromkeys(keys, "Bearer")


def build_api_client(
    vetted: VettedKubeconfig,
    settings: ClientSettings | None = None,
    *,
    key_dir: Path | None = None,
) -> ClusterApiClient:
    """A new client for ``vetted``'s cluster; the caller closes it.

    ``key_dir`` is where the private directory for a client certificate is created (the
    system temporary directory by default).
    """
    settings = settings or ClientSettings()
    configuration = Configuration(host=vetted.server)
    configuration.verify_ssl = not vetted.insecure_skip_tls_verify
    configuration.tls_server_name = vetted.tls_server_name
    configuration.retries = Retry(
        total=_CONNECT_RETRIES,
        connect=_CONNECT_RETRIES,
        read=0,
        redirect=0,
        status=0,
        other=0,
        raise_on_redirect=False,
        raise_on_status=False,
    )
    configuration.debug = False
    if vetted.token is not None:
        configuration.api_key, configuration.api_key_prefix = bearer_token(vetted.token)
    # A CA in memory where the client takes one (37.x: ``ca_cert_data``); up to 36.x it
    # takes only a file, written with the client certificate's, in the private directory.
    ca_in_file = vetted.ca_pem is not None and not hasattr(configuration, "ca_cert_data")
    material: KeyMaterial | None = None
    if ca_in_file or (vetted.client_cert_pem is not None and vetted.client_key_pem is not None):
        material = KeyMaterial(prefix=f"kube-dispatcher-{vetted.cluster}-", base_dir=key_dir)
    try:
        if vetted.ca_pem is not None and material is not None and ca_in_file:
            configuration.ssl_ca_cert = str(material.write("ca.crt", vetted.ca_pem))
        elif vetted.ca_pem is not None:
            configuration.ca_cert_data = vetted.ca_pem
        if material is not None and vetted.client_cert_pem and vetted.client_key_pem:
            configuration.cert_file = str(material.write("client.crt", vetted.client_cert_pem))
            configuration.key_file = str(material.write("client.key", vetted.client_key_pem))
    except BaseException:
        if material is not None:
            material.remove()
        raise
    try:
        client = ClusterApiClient(
            configuration,
            cluster=vetted.cluster,
            timeout=(settings.connect_timeout_seconds, settings.read_timeout_seconds),
            material=material,
        )
        if not vetted.allow_private_addresses:
            _guard_addresses(client, vetted.cluster)
        return client
    except BaseException:
        if material is not None:
            material.remove()
        raise
