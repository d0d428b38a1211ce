"""One cached, self-refreshing Kubernetes API client per cluster.

``CredentialProvider`` knows, per cluster of the settings, where its credential comes from:

* ``vault_kv``: a kubeconfig in Vault KV v2 (vetted whole before use);
* ``vault_kubernetes_secrets``: a short-lived service account token from Vault's Kubernetes
  secrets engine, with the server URL from the settings and the CA inline or from KV;
* ``kubeconfig_file``: a mounted kubeconfig file, read by us (never by ``kubernetes.config``)
  and vetted like one from Vault;
* ``in_cluster``: the pod's service account token and CA, API server from the environment.

Clients are cached with their credential's expiry (a lease, or the token's ``exp`` claim)
and replaced lazily, on ``api_client()``, once ``renew_ahead_fraction`` of the lifetime is
left; credentials without a known end are re-read after ``max_age_seconds``. A failed early
refresh keeps the still-valid client and is retried after a pause. ``refresh_due()`` does
the same for every cluster, and ``refresh_forever()`` calls it in a loop (the service runs
it on a supervised thread every ``service.credential_refresh_seconds``), so credentials are
renewed ahead of expiry without traffic. While one caller refreshes a still-valid
credential early, the others keep using it and do not wait for the Vault round trip.

When a cluster answers 401 the caller ``invalidate()``s exactly the client that failed; the
next ``api_client()`` fetches once, and concurrent callers wait for that one fetch (a lock
per cluster; an invalidation of a client that is no longer current does nothing).
``call(cluster, fn)`` wraps that: a rotation is picked up without the caller seeing the 401.

A credential our rules refuse (``KubeconfigRejected``: an exec plugin, a server or CA other
than the cluster's ``pin``, a loopback address...) is remembered: until the cluster's
``refused_retry`` backoff (``core.backoff.backoff_delay``: capped, exponential, jittered)
has passed, every caller gets the same refusal again without Vault being asked, and one
``kubeconfig.rejected`` error is logged per fetch, not per caller.

A replaced client is closed at once (its key material removed): take a client from
``api_client()`` for each operation or watch (re)connection rather than keeping one.

I/O: Vault requests (through ``VaultSession``), reads kubeconfig and service account files,
writes client-certificate key material; no background threads.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from dispatcher import tracing
from dispatcher.core.backoff import backoff_delay
from dispatcher.credentials.clients import ClusterApiClient, build_api_client
from dispatcher.credentials.kubeconfig import (
    VettedKubeconfig,
    parse_kubeconfig,
    vet_token_credentials,
)
from dispatcher.credentials.vault import VaultSession
from dispatcher.errors import CredentialError, KubeconfigRejected
from dispatcher.logging import get_logger
from dispatcher.metrics import CREDENTIAL_EXPIRY
from dispatcher.settings import (
    ClusterSettings,
    KubeconfigFileCredentials,
    Settings,
    VaultKubernetesSecretsCredentials,
    VaultKVCredentials,
)

__all__ = ["SERVICE_ACCOUNT_DIR", "CredentialProvider"]

T = TypeVar("T")

log = get_logger(__name__)

#: Where Kubernetes mounts a pod's service account token, CA and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The kubelet rotates projected tokens; client-go re-reads the file every minute too.
_IN_CLUSTER_MAX_AGE = 60.0
#: Pause before retrying a failed early refresh (the current credential still works).
_REFRESH_RETRY_SECONDS = 10.0
_DEFAULT_RENEW_AHEAD = 0.25


@dataclass(frozen=True, slots=True)
class _Fetched:
    vetted: VettedKubeconfig
    expires_at: float | None
    #: Non-secret facts for the log line (KV version, service account...).
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Re-read after this long even without an expiry (None: only on expiry or 401).
    max_age: float | None = None
    #: The Vault lease behind the credential, revoked once it is replaced or dropped.
    lease_id: str | None = None


class _Source(Protocol):
    kind: str

    def fetch(self) -> _Fetched: ...


@dataclass(slots=True)
class _Current:
    client: ClusterApiClient
    fetched_at: float
    expires_at: float | None
    refresh_at: float | None
    lease_id: str | None = None


@dataclass(slots=True)
class _Cluster:
    settings: ClusterSettings
    source: _Source
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: _Current | None = None
    retry_at: float = 0.0
    #: Why the next fetch happens (for the log): initial, invalidated.
    pending_reason: str = "initial"
    fetches: int = 0
    #: The last refusal and how many fetches in a row were refused.
    refused: KubeconfigRejected | None = None
    refusals: int = 0
    #: No fetch before this time while refused (the backoff).
    refused_until: float = 0.0


class CredentialProvider:
    """Per-cluster Kubernetes API clients with credentials from Vault, files or the pod."""

    def __init__(
        self,
        settings: Settings,
        vault: VaultSession | None,
        *,
        clock: Callable[[], float] = time.time,
        max_age_seconds: float | None = 900.0,
        key_dir: Path | None = None,  # None: the system temporary directory
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        environ: Mapping[str, str] | None = None,  # None: os.environ
        draw: Callable[[], float] = random.random,  # the backoff jitter; fixed for tests
    ) -> None:
        self._clock = clock
        self._draw = draw
        self._vault = vault
        self._key_dir = key_dir
        self._renew_ahead = (
            settings.vault.renew_ahead_fraction
            if settings.vault is not None
            else _DEFAULT_RENEW_AHEAD
        )
        self._max_age = max_age_seconds
        self._closed = False
        self._clusters: dict[str, _Cluster] = {}
        for cluster in settings.clusters:
            source = _source_for(
                cluster,
                vault,
                service_account_dir=service_account_dir,
                environ=environ if environ is not None else os.environ,
            )
            self._clusters[cluster.name] = _Cluster(settings=cluster, source=source)

    # ------------------------------------------------------------------------- public

    @property
    def clusters(self) -> tuple[str, ...]:
        return tuple(self._clusters)

    def api_client(self, cluster: str) -> ApiClient:
        """The current client of ``cluster``, fetching or refreshing its credential if due.

        Raises ``CredentialError`` (``VaultError``, ``KubeconfigRejected``) when no usable
        credential can be had; a still-valid one is kept if only an early refresh failed.
        """
        # In the trace of the job whose call needed it (a pod create), if any: cached, or
        # fetched (with the Vault calls under it).
        with tracing.child("credentials", {"dispatcher.cluster": cluster}) as span:
            state = self._state(cluster)
            current = state.current
            now = self._clock()
            cached = current is not None and not self._due(state, current, now)
            if span is not None:
                span.set_attribute("dispatcher.credentials.cached", cached)
            if cached and current is not None:
                return current.client
            return self._locked_client(state, cluster, current, now)

    def _locked_client(
        self, state: _Cluster, cluster: str, current: _Current | None, now: float
    ) -> ApiClient:
        still_valid = current is not None and (
            current.expires_at is None or now < current.expires_at
        )
        if still_valid and current is not None and not state.lock.acquire(blocking=False):
            # Only an early refresh is due, and another caller is doing it (Vault I/O under
            # the lock): the current credential still serves this caller, who does not wait.
            return current.client
        if not still_valid:
            state.lock.acquire()
        try:
            return self._current_or_fetched(state, cluster)
        finally:
            state.lock.release()

    def _current_or_fetched(self, state: _Cluster, cluster: str) -> ApiClient:
        """``api_client``'s work under ``state.lock``."""
        if self._closed:
            raise CredentialError("the credential provider is closed", cluster=cluster)
        current = state.current
        now = self._clock()
        if current is None:
            return self._fetch_locked(state, state.pending_reason).client
        if not self._due(state, current, now):
            return current.client
        expired = current.expires_at is not None and now >= current.expires_at
        try:
            return self._fetch_locked(state, "expired" if expired else "expiring").client
        except CredentialError as exc:
            if expired:
                raise
            # A refused refresh waits for the refusal backoff (set by the fetch).
            state.retry_at = max(state.retry_at, now + _REFRESH_RETRY_SECONDS)
            log.warning(
                "credentials.refresh_failed",
                cluster=cluster,
                error=str(exc),
                expires_in=_seconds_left(current.expires_at, now),
            )
            return current.client

    def invalidate(self, cluster: str, client: ApiClient) -> None:
        """Drop ``client`` if it is still ``cluster``'s current one (it was refused).

        The next ``api_client()`` fetches a new credential; callers arriving meanwhile wait
        for that one fetch. Invalidating a client that was replaced already does nothing.
        """
        state = self._state(cluster)
        with state.lock:
            current = state.current
            if current is None or current.client is not client:
                return
            state.current = None
            state.pending_reason = "invalidated"
            current.client.close()
            self._revoke(cluster, current)
            CREDENTIAL_EXPIRY.labels(cluster=cluster).set(0)
            log.info("credentials.invalidate", cluster=cluster)

    def expiry(self, cluster: str) -> float | None:
        """Unix time the cached credential of ``cluster`` expires (``None``: not known)."""
        current = self._state(cluster).current
        return current.expires_at if current is not None else None

    def call(self, cluster: str, fn: Callable[[ApiClient], T]) -> T:
        """``fn(api_client(cluster))``; after a 401, once more with a fresh credential.

        Other ``ApiException``s, and a second 401, reach the caller unchanged.
        """
        client = self.api_client(cluster)
        try:
            return fn(client)
        except ApiException as exc:
            if exc.status != 401:
                raise
            log.info("credentials.unauthorized", cluster=cluster)
            self.invalidate(cluster, client)
        return fn(self.api_client(cluster))

    def refresh_forever(self, wait: Callable[[float], bool], interval: float) -> None:
        """``refresh_due()`` every ``interval`` seconds until ``wait`` says stop (a
        supervised thread's ``wait``): tokens and leases are renewed ahead of expiry even
        when no request needs them, so a quiet dispatcher's credentials never lapse."""
        while not wait(interval):
            self.refresh_due()

    def refresh_due(self) -> tuple[str, ...]:
        """Refresh every credential (and the Vault token) that is due; return those refreshed.

        Failures are logged, not raised: the next ``api_client()`` reports them.
        """
        if self._vault is not None:
            try:
                self._vault.refresh_due()
            except CredentialError as exc:
                log.warning("vault.refresh_failed", error=str(exc))
        refreshed = []
        for name, state in self._clusters.items():
            current = state.current
            if current is None or not self._due(state, current, self._clock()):
                continue
            before = state.fetches
            try:
                self.api_client(name)
            except CredentialError as exc:
                log.warning("credentials.refresh_failed", cluster=name, error=str(exc))
            if state.fetches != before:
                refreshed.append(name)
        return tuple(refreshed)

    def close(self) -> None:
        """Close every client and remove its key material; later calls raise."""
        self._closed = True
        for name, state in self._clusters.items():
            with state.lock:
                if state.current is not None:
                    state.current.client.close()
                    self._revoke(name, state.current)
                    state.current = None
                    CREDENTIAL_EXPIRY.labels(cluster=name).set(0)
        log.info("credentials.closed")

    # ------------------------------------------------------------------------- internals

    def _revoke(self, cluster: str, dropped: _Current) -> None:
        """Revoke the Vault lease of a credential no longer used; a failure is logged (the
        lease still ends at its TTL)."""
        if dropped.lease_id is None or self._vault is None:
            return
        try:
            self._vault.revoke_lease(dropped.lease_id, cluster=cluster)
        except CredentialError as exc:
            log.warning("credentials.revoke_failed", cluster=cluster, error=str(exc))
            return
        log.info("credentials.revoked", cluster=cluster)

    def _state(self, cluster: str) -> _Cluster:
        state = self._clusters.get(cluster)
        if state is None:
            known = ", ".join(self._clusters) or "none"
            raise CredentialError(f"unknown cluster (known: {known})", cluster=cluster)
        return state

    @staticmethod
    def _due(state: _Cluster, current: _Current, now: float) -> bool:
        if current.expires_at is not None and now >= current.expires_at:
            return True
        return current.refresh_at is not None and now >= max(current.refresh_at, state.retry_at)

    def _fetch_locked(self, state: _Cluster, reason: str) -> _Current:
        name = state.settings.name
        kind = state.source.kind
        now = self._clock()
        if state.refused is not None and now < state.refused_until:
            raise state.refused
        try:
            fetched = state.source.fetch()
        except KubeconfigRejected as exc:
            retry = state.settings.refused_retry
            state.refused = exc
            state.refusals += 1
            wait = backoff_delay(
                state.refusals,
                base=retry.base_seconds,
                cap=retry.max_seconds,
                jitter=retry.jitter,
                draw=self._draw(),
            )
            state.refused_until = now + wait
            state.retry_at = max(state.retry_at, state.refused_until)
            log.error(
                "kubeconfig.rejected",
                cluster=name,
                source=kind,
                refusal=exc.refusal.value,
                reason=exc.reason,
                refusals=state.refusals,
                retry_in=round(wait, 1),
            )
            raise
        except CredentialError as exc:
            log.warning("credentials.fetch_failed", cluster=name, source=kind, error=str(exc))
            raise
        client = build_api_client(fetched.vetted, state.settings.client, key_dir=self._key_dir)
        now = self._clock()
        max_age = fetched.max_age if fetched.max_age is not None else self._max_age
        current = _Current(
            client=client,
            fetched_at=now,
            expires_at=fetched.expires_at,
            refresh_at=_refresh_at(now, fetched.expires_at, self._renew_ahead, max_age),
            lease_id=fetched.lease_id,
        )
        previous, state.current = state.current, current
        if state.refused is not None:
            log.info("kubeconfig.accepted", cluster=name, source=kind, after=state.refusals)
        state.refused, state.refusals, state.refused_until = None, 0, 0.0
        state.retry_at = 0.0
        state.pending_reason = "initial"
        state.fetches += 1
        if previous is not None:
            previous.client.close()
            self._revoke(name, previous)
        CREDENTIAL_EXPIRY.labels(cluster=name).set(fetched.expires_at or 0)
        log.info(
            "credentials.fetch" if state.fetches == 1 else "credentials.refetch",
            cluster=name,
            source=kind,
            reason=reason,
            expires_in=_seconds_left(fetched.expires_at, now),
            client_certificate=fetched.vetted.uses_client_certificate,
            **fetched.details,
        )
        return current


def _refresh_at(
    fetched_at: float, expires_at: float | None, fraction: float, max_age: float | None
) -> float | None:
    candidates = []
    if expires_at is not None:
        lifetime = max(expires_at - fetched_at, 0.0)
        candidates.append(expires_at - lifetime * fraction)
    if max_age is not None:
        candidates.append(fetched_at + max_age)
    return min(candidates) if candidates else None


def _seconds_left(expires_at: float | None, now: float) -> float | None:
    return round(expires_at - now, 1) if expires_at is not None else None


def _jwt_expiry(token: str | None) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (only to plan a refresh)."""
    if token is None or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


# ----------------------------------------------------------------------------- sources


def _source_for(
    cluster: ClusterSettings,
    vault: VaultSession | None,
    *,
    service_account_dir: Path,
    environ: Mapping[str, str],
) -> _Source:
    credentials = cluster.credentials
    if credentials.uses_vault and vault is None:
        raise CredentialError(
            "its credentials come from Vault, but no Vault session was given", cluster=cluster.name
        )
    if credentials.vault_kv is not None and vault is not None:
        return _VaultKVSource(cluster, credentials.vault_kv, vault)
    if credentials.vault_kubernetes_secrets is not None and vault is not None:
        return _SecretsEngineSource(cluster, credentials.vault_kubernetes_secrets, vault)
    if credentials.kubeconfig_file is not None:
        return _KubeconfigFileSource(cluster, credentials.kubeconfig_file)
    return _InClusterSource(cluster, service_account_dir, environ)


class _VaultKVSource:
    kind = "vault_kv"

    def __init__(
        self, cluster: ClusterSettings, ref: VaultKVCredentials, vault: VaultSession
    ) -> None:
        self._cluster = cluster
        self._ref = ref
        self._vault = vault

    def fetch(self) -> _Fetched:
        ref = self._ref
        entry = self._vault.read_kv(
            mount=ref.mount,
            path=ref.path,
            field=ref.field,
            version=ref.version,
            cluster=self._cluster.name,
        )
        vetted = parse_kubeconfig(
            entry.value,
            cluster=self._cluster.name,
            context=ref.context,
            allow=self._cluster.allow_insecure,
            pin=self._cluster.pin,
        )
        return _Fetched(
            vetted, expires_at=_jwt_expiry(vetted.token), details={"kv_version": entry.version}
        )


class _SecretsEngineSource:
    kind = "vault_kubernetes_secrets"

    def __init__(
        self,
        cluster: ClusterSettings,
        ref: VaultKubernetesSecretsCredentials,
        vault: VaultSession,
    ) -> None:
        self._cluster = cluster
        self._ref = ref
        self._vault = vault

    def fetch(self) -> _Fetched:
        ref = self._ref
        name = self._cluster.name
        ca_pem = ref.ca_pem
        if ref.ca_from_kv is not None:
            ca_pem = self._vault.read_kv(
                mount=ref.ca_from_kv.mount,
                path=ref.ca_from_kv.path,
                field=ref.ca_from_kv.field,
                version=ref.ca_from_kv.version,
                cluster=name,
            ).value
        leased = self._vault.kubernetes_creds(
            mount=ref.mount,
            role=ref.role,
            kubernetes_namespace=ref.kubernetes_namespace,
            ttl_seconds=ref.ttl_seconds,
            cluster=name,
        )
        vetted = vet_token_credentials(
            cluster=name,
            server=ref.server,
            token=leased.token,
            ca_pem=ca_pem,
            namespace=ref.kubernetes_namespace,
            allow=self._cluster.allow_insecure,
            pin=self._cluster.pin,
        )
        return _Fetched(
            vetted,
            # Vault asked the API server for a token of exactly the lease's length.
            expires_at=leased.expires_at,
            details={"service_account": leased.service_account, "namespace": leased.namespace},
            lease_id=leased.lease_id or None,
        )


class _KubeconfigFileSource:
    kind = "kubeconfig_file"

    def __init__(self, cluster: ClusterSettings, ref: KubeconfigFileCredentials) -> None:
        self._cluster = cluster
        self._ref = ref

    def fetch(self) -> _Fetched:
        ref = self._ref
        text = _read_text(ref.path, "kubeconfig file", cluster=self._cluster.name)
        vetted = parse_kubeconfig(
            text,
            cluster=self._cluster.name,
            context=ref.context,
            allow=self._cluster.allow_insecure,
            pin=self._cluster.pin,
        )
        return _Fetched(vetted, expires_at=_jwt_expiry(vetted.token))


class _InClusterSource:
    kind = "in_cluster"

    def __init__(
        self, cluster: ClusterSettings, directory: Path, environ: Mapping[str, str]
    ) -> None:
        self._cluster = cluster
        self._directory = directory
        self._environ = environ

    def fetch(self) -> _Fetched:
        name = self._cluster.name
        host = self._environ.get("KUBERNETES_SERVICE_HOST")
        port = self._environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise CredentialError(
                "in-cluster credentials need KUBERNETES_SERVICE_HOST and "
                "KUBERNETES_SERVICE_PORT (is the dispatcher running in a pod?)",
                cluster=name,
            )
        if ":" in host:
            host = f"[{host}]"
        token = _read_text(self._directory / "token", "service account token", cluster=name)
        ca_pem = _read_text(self._directory / "ca.crt", "service account CA", cluster=name)
        namespace_file = self._directory / "namespace"
        namespace = (
            _read_text(namespace_file, "namespace", cluster=name).strip()
            if namespace_file.is_file()
            else None
        )
        vetted = vet_token_credentials(
            cluster=name,
            server=f"https://{host}:{port}",
            token=token.strip(),
            ca_pem=ca_pem,
            namespace=namespace or None,
            allow=self._cluster.allow_insecure,
            pin=self._cluster.pin,
        )
        return _Fetched(vetted, expires_at=_jwt_expiry(vetted.token), max_age=_IN_CLUSTER_MAX_AGE)


def _read_text(path: Path, what: str, *, cluster: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise CredentialError(f"cannot read the {what} {path}: {reason}", cluster=cluster) from exc
