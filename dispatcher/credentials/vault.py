"""The dispatcher's Vault session: log in, keep the token fresh, read credentials.

``VaultSession`` logs in with the method of ``VaultSettings.auth`` (Kubernetes auth with the
pod's service account token, AppRole, or a fixed token), then:

* renews its token when ``renew_ahead_fraction`` of the TTL is left (or logs in again when
  the token is not renewable, or its renewal came back too short to be worth keeping);
* logs in again once, and only once, when Vault refuses the token (HTTP 401/403) or it has
  expired. Like kopf's ``Vault.invalidate()``: every token has a generation; callers that
  saw a failing generation queue on one lock, the first one logs in, the others find a newer
  generation and reuse it. A 403 with a token that still looks itself up is a policy denial,
  not an expiry, and is raised without logging in again;
* reads KV v2 entries (optionally a pinned version) and short-lived service account tokens
  from the Kubernetes secrets engine (``{mount}/creds/{role}``).

Every request has the connect/read timeouts of the settings, follows no redirects (the
token header would follow them) and is counted in ``VAULT_REQUESTS``. Library exceptions
become ``VaultError``/``CredentialError`` chained with ``from``; messages never hold a token,
a secret id or a response body, only Vault's own error strings, redacted.

The clock is injected (``clock``) so tests can move time past renewal points.

I/O: HTTP to Vault; reads the service account token file at each Kubernetes login; writes
the Vault CA to a private file when it is given inline (requests reads CAs from files).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from dispatcher import tracing
from dispatcher.credentials.material import KeyMaterial
from dispatcher.errors import CredentialError, VaultError
from dispatcher.logging import get_logger, redact_text
from dispatcher.metrics import VAULT_REQUESTS, VAULT_TOKEN_EXPIRY
from dispatcher.settings import VaultSettings

__all__ = ["KVEntry", "LeasedToken", "VaultSession"]

T = TypeVar("T")

log = get_logger(__name__)

_HVAC_STATUS: dict[type[Exception], int] = {
    hvac.exceptions.InvalidRequest: 400,
    hvac.exceptions.Unauthorized: 401,
    hvac.exceptions.Forbidden: 403,
    hvac.exceptions.InvalidPath: 404,
    hvac.exceptions.PreconditionFailed: 412,
    hvac.exceptions.RateLimitExceeded: 429,
    hvac.exceptions.InternalServerError: 500,
    hvac.exceptions.VaultNotInitialized: 501,
    hvac.exceptions.BadGateway: 502,
    hvac.exceptions.VaultDown: 503,
}
_DENIED = (401, 403)
_FIXED_AUTH_REFUSED = (
    "the configured Vault token is no longer valid (expired or revoked, or Vault lost its "
    "storage); replace vault.auth.token.token"
)
#: After a failed renewal, wait this long before trying again (the token is still valid).
_RENEW_RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One field of a KV v2 entry and the version it came from."""

    value: str = field(repr=False)
    version: int | None


@dataclass(frozen=True, slots=True)
class LeasedToken:
    """A service account token from the Kubernetes secrets engine and its lease."""

    token: str = field(repr=False)
    lease_id: str = field(repr=False)
    issued_at: float
    #: Unix time at which Vault's lease (and so the token) ends.
    expires_at: float
    service_account: str | None
    namespace: str | None


@dataclass(slots=True)
class _Token:
    """The session's current token; replaced whole on every login."""

    client: hvac.Client
    generation: int
    #: TTL granted by the last login or renewal (0: the token never expires).
    ttl: float
    expires_at: float | None
    renewable: bool
    accessor: str | None
    retry_renew_at: float = 0.0


class VaultSession:
    """A logged-in Vault client, shared by every thread of the dispatcher."""

    def __init__(self, settings: VaultSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._material: KeyMaterial | None = None
        verify: bool | str = True
        if settings.ca_pem is not None:
            self._material = KeyMaterial(prefix="kube-dispatcher-vault-")
            verify = str(self._material.write("vault-ca.crt", settings.ca_pem))
        elif settings.ca_file is not None:
            verify = str(settings.ca_file)
        # One connection pool for every token. hvac takes `verify` from the session when
        # one is given, so it is set here.
        self._session = requests.Session()
        self._session.verify = verify
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._generation = 0
        self._closed = False

    # ------------------------------------------------------------------------- public

    @property
    def method(self) -> str:
        auth = self._settings.auth
        if auth.kubernetes is not None:
            return "kubernetes"
        if auth.approle is not None:
            return "approle"
        return "token"

    @property
    def renew_ahead_fraction(self) -> float:
        return self._settings.renew_ahead_fraction

    @property
    def generation(self) -> int:
        """How many tokens this session has had (each login counts one)."""
        return self._generation

    @property
    def token_accessor(self) -> str | None:
        """The current token's accessor (not a secret: it cannot authenticate)."""
        token = self._token
        return token.accessor if token is not None else None

    def token_expiry(self) -> float | None:
        """Unix time the current token expires; ``None`` when it never does or none is held."""
        token = self._token
        return token.expires_at if token is not None else None

    def login(self) -> None:
        """Make sure a fresh token is held: log in, renew or do nothing."""
        self._fresh_token()

    def refresh_due(self) -> None:
        """Renew or replace the token if it is within its renew-ahead window (for a loop)."""
        self._fresh_token()

    def read_kv(
        self,
        *,
        mount: str,
        path: str,
        field: str,
        version: int | None = None,
        cluster: str | None = None,
    ) -> KVEntry:
        """One string field of a KV v2 entry (the latest version unless ``version``)."""
        where = f"{mount}/{path}"

        def read(client: hvac.Client) -> Any:
            return client.secrets.kv.v2.read_secret_version(
                path=path, version=version, mount_point=mount, raise_on_deleted_version=True
            )

        response = self._authenticated("kv_read", where, read, cluster=cluster)
        data = _dig(response, "data", "data")
        if not isinstance(data, Mapping) or field not in data:
            raise CredentialError(
                f"Vault KV entry {where} has no field {field!r}; set the field name "
                "in the cluster's credentials or add it to the entry",
                cluster=cluster,
            )
        value = data[field]
        if not isinstance(value, str):
            raise CredentialError(
                f"field {field!r} of Vault KV entry {where} is not a string", cluster=cluster
            )
        found = _dig(response, "data", "metadata", "version")
        return KVEntry(value=value, version=found if isinstance(found, int) else None)

    def kubernetes_creds(
        self,
        *,
        mount: str,
        role: str,
        kubernetes_namespace: str,
        ttl_seconds: int,
        cluster: str | None = None,
    ) -> LeasedToken:
        """A new service account token from the Kubernetes secrets engine."""
        where = f"{mount}/creds/{role}"
        issued_at = self._clock()

        def generate(client: hvac.Client) -> Any:
            return client.write_data(
                where,
                data={"kubernetes_namespace": kubernetes_namespace, "ttl": f"{ttl_seconds}s"},
            )

        response = self._authenticated("kubernetes_creds", where, generate, cluster=cluster)
        token = _dig(response, "data", "service_account_token")
        lease_duration = _dig(response, "lease_duration")
        if not isinstance(token, str) or not token or not isinstance(lease_duration, int):
            raise VaultError(
                f"Vault answered {where} without a token or lease duration", cluster=cluster
            )
        account = _dig(response, "data", "service_account_name")
        namespace = _dig(response, "data", "service_account_namespace")
        return LeasedToken(
            token=token,
            lease_id=str(response.get("lease_id") or ""),
            issued_at=issued_at,
            expires_at=issued_at + lease_duration,
            service_account=account if isinstance(account, str) else None,
            namespace=namespace if isinstance(namespace, str) else kubernetes_namespace,
        )

    def revoke_lease(self, lease_id: str, *, cluster: str | None = None) -> None:
        """End a lease we no longer use (a replaced Kubernetes secrets engine token).

        The path form (``sys/leases/revoke/<lease id>``) lets a policy allow revoking only
        the leases of the creds paths it may read.
        """
        where = f"sys/leases/revoke/{lease_id}"

        def revoke(client: hvac.Client) -> Any:
            return client.adapter.put(f"/v1/{where}")

        self._authenticated("revoke_lease", where, revoke, cluster=cluster)

    def invalidate(self, generation: int, *, reason: str = "invalidated") -> None:
        """Forget the token of ``generation`` and log in again, once for all callers.

        A no-op if a newer token is held already (someone else logged in again).
        """
        with self._lock:
            if self._token is not None and self._token.generation != generation:
                return
            self._login_locked(reason)

    def close(self) -> None:
        """Drop the token, close the HTTP session we own, remove the CA file."""
        with self._lock:
            self._closed = True
            self._token = None
            VAULT_TOKEN_EXPIRY.set(0)
            self._session.close()
            if self._material is not None:
                self._material.remove()

    # ------------------------------------------------------------------------- token life

    def _client(self, token: str) -> hvac.Client:
        # token="" (not None): hvac would otherwise pick up $VAULT_TOKEN or ~/.vault-token.
        return hvac.Client(
            url=self._settings.url,
            token=token,
            verify=self._session.verify,
            timeout=(self._settings.connect_timeout_seconds, self._settings.read_timeout_seconds),
            session=self._session,
            namespace=self._settings.namespace,
            allow_redirects=False,
        )

    def _fresh_token(self) -> _Token:
        with self._lock:
            if self._closed:
                raise VaultError("the Vault session is closed")
            token = self._token
            if token is None:
                return self._login_locked("initial")
            if token.expires_at is None:
                return token
            now = self._clock()
            left = token.expires_at - now
            if left <= 0:
                return self._login_locked("expired")
            if left > token.ttl * self._settings.renew_ahead_fraction or now < token.retry_renew_at:
                return token
            if token.renewable:
                return self._renew_locked(token)
            if self.method == "token":
                return token  # a fixed token that cannot be renewed is used until it expires
            try:
                return self._login_locked("expiring")
            except CredentialError:
                # The current token still works for a while: keep it, try again shortly.
                token.retry_renew_at = now + _RENEW_RETRY_SECONDS
                return token

    def _login_locked(self, reason: str) -> _Token:
        method = self.method
        anonymous = self._client("")
        auth = self._settings.auth
        try:
            if auth.kubernetes is not None:
                kubernetes = auth.kubernetes
                jwt = _read_jwt(kubernetes.jwt_path)
                response = self._request(
                    "login",
                    f"auth/{kubernetes.mount}/login",
                    lambda: anonymous.auth.kubernetes.login(
                        role=kubernetes.role,
                        jwt=jwt,
                        use_token=False,
                        mount_point=kubernetes.mount,
                    ),
                )
            elif auth.approle is not None:
                approle = auth.approle
                response = self._request(
                    "login",
                    f"auth/{approle.mount}/login",
                    lambda: anonymous.auth.approle.login(
                        role_id=approle.role_id,
                        secret_id=approle.secret_id.get_secret_value(),
                        use_token=False,
                        mount_point=approle.mount,
                    ),
                )
            elif auth.token is not None:
                return self._adopt_fixed_token_locked(auth.token.token.get_secret_value(), reason)
            else:  # pragma: no cover - VaultAuth requires exactly one method
                raise CredentialError("no Vault auth method is configured")
        except (VaultError, CredentialError) as exc:
            log.warning("vault.login_failed", method=method, reason=reason, error=str(exc))
            raise
        granted = _dig(response, "auth")
        client_token = _dig(granted, "client_token")
        if not isinstance(client_token, str) or not client_token:
            raise VaultError(f"Vault answered the {method} login without a token")
        now = self._clock()
        ttl = float(_dig(granted, "lease_duration") or 0)
        token = self._install_locked(
            client_token,
            ttl=ttl,
            expires_at=now + ttl if ttl > 0 else None,
            renewable=bool(_dig(granted, "renewable")),
            accessor=_dig(granted, "accessor"),
        )
        log.info(
            "vault.login",
            method=method,
            reason=reason,
            generation=token.generation,
            token_ttl=ttl,
            token_renewable=token.renewable,
            accessor=token.accessor,
        )
        return token

    def _adopt_fixed_token_locked(self, secret: str, reason: str) -> _Token:
        client = self._client(secret)
        now = self._clock()
        try:
            response = self._request(
                "lookup", "auth/token/lookup-self", client.auth.token.lookup_self
            )
        except VaultError as exc:
            if exc.status in _DENIED:
                raise VaultError(_FIXED_AUTH_REFUSED, status=exc.status) from exc
            raise
        data = _dig(response, "data") or {}
        ttl = float(_dig(data, "ttl") or 0)
        token = self._install_locked(
            secret,
            ttl=float(_dig(data, "creation_ttl") or ttl),
            expires_at=now + ttl if ttl > 0 else None,
            renewable=bool(_dig(data, "renewable")),
            accessor=_dig(data, "accessor"),
            client=client,
        )
        log.info(
            "vault.login",
            method="token",
            reason=reason,
            generation=token.generation,
            token_ttl=ttl,
            token_renewable=token.renewable,
            accessor=token.accessor,
        )
        return token

    def _install_locked(
        self,
        secret: str,
        *,
        ttl: float,
        expires_at: float | None,
        renewable: bool,
        accessor: Any,
        client: hvac.Client | None = None,
    ) -> _Token:
        self._generation += 1
        token = _Token(
            client=client if client is not None else self._client(secret),
            generation=self._generation,
            ttl=ttl,
            expires_at=expires_at,
            renewable=renewable,
            accessor=accessor if isinstance(accessor, str) else None,
        )
        self._token = token
        VAULT_TOKEN_EXPIRY.set(expires_at or 0)
        return token

    def _renew_locked(self, token: _Token) -> _Token:
        now = self._clock()
        try:
            response = self._request(
                "renew", "auth/token/renew-self", token.client.auth.token.renew_self
            )
        except VaultError as exc:
            if exc.status in _DENIED:
                if self.method == "token":
                    raise VaultError(_FIXED_AUTH_REFUSED, status=exc.status) from exc
                log.info("vault.renew_refused", generation=token.generation, status=exc.status)
                return self._login_locked("renew_refused")
            log.warning("vault.renew_failed", generation=token.generation, error=str(exc))
            token.retry_renew_at = now + _RENEW_RETRY_SECONDS
            return token  # still valid for a while; try again shortly
        ttl = float(_dig(response, "auth", "lease_duration") or 0)
        renewable = bool(_dig(response, "auth", "renewable"))
        # Near its max TTL Vault grants less than asked: once the grant falls inside the
        # renew-ahead window, renewing again is pointless and a new login is due instead.
        if ttl <= token.ttl * self._settings.renew_ahead_fraction:
            renewable = False
        token.expires_at = now + ttl if ttl > 0 else None
        token.renewable = renewable
        token.retry_renew_at = 0.0
        VAULT_TOKEN_EXPIRY.set(token.expires_at or 0)
        log.info(
            "vault.renew",
            generation=token.generation,
            token_ttl=ttl,
            token_renewable=renewable,
            accessor=token.accessor,
        )
        return token

    def _still_valid_locked(self, token: _Token) -> bool:
        """Whether Vault still knows ``token`` (so a 403 was the policy speaking)."""
        try:
            self._request("lookup", "auth/token/lookup-self", token.client.auth.token.lookup_self)
        except VaultError as exc:
            if exc.status in _DENIED:
                return False
            raise
        return True

    def _reauthenticate(self, seen: _Token, seen_status: int | None) -> bool:
        """After Vault refused ``seen``: whether a retry with a newer token makes sense."""
        with self._lock:
            current = self._token
            if current is not None and current.generation != seen.generation:
                return True  # another caller logged in again meanwhile
            if current is not None and self._still_valid_locked(current):
                return False  # the token is fine: the policy denies this path
            if self.method == "token":
                raise VaultError(_FIXED_AUTH_REFUSED, status=seen_status)
            log.info("vault.reauthenticate", status=seen_status, generation=seen.generation)
            self._login_locked("refused")
            return True

    # ------------------------------------------------------------------------- requests

    def _authenticated(
        self,
        operation: str,
        where: str,
        fn: Callable[[hvac.Client], T],
        *,
        cluster: str | None = None,
    ) -> T:
        token = self._fresh_token()
        try:
            return self._request(operation, where, lambda: fn(token.client), cluster=cluster)
        except VaultError as exc:
            if exc.status not in _DENIED or not self._reauthenticate(token, exc.status):
                raise
        token = self._fresh_token()
        return self._request(operation, where, lambda: fn(token.client), cluster=cluster)

    def _request(
        self, operation: str, where: str, fn: Callable[[], T], *, cluster: str | None = None
    ) -> T:
        # In a job's trace when a job's pod create needed it (``tracing.child``).
        with tracing.child(
            f"vault.{operation}", {"vault.path": where, "dispatcher.cluster": cluster}
        ):
            return self._send(operation, where, fn, cluster=cluster)

    def _send(
        self, operation: str, where: str, fn: Callable[[], T], *, cluster: str | None = None
    ) -> T:
        try:
            result = fn()
        except hvac.exceptions.VaultError as exc:
            status = _HVAC_STATUS.get(type(exc))
            VAULT_REQUESTS.labels(operation=operation, outcome=_outcome(status)).inc()
            raise VaultError(
                _describe(operation, where, status, exc), cluster=cluster, status=status
            ) from exc
        except requests.exceptions.Timeout as exc:
            VAULT_REQUESTS.labels(operation=operation, outcome="unavailable").inc()
            raise VaultError(
                f"Vault did not answer {operation} ({where}) within "
                f"{self._settings.read_timeout_seconds:g}s",
                cluster=cluster,
            ) from exc
        except requests.exceptions.SSLError as exc:
            VAULT_REQUESTS.labels(operation=operation, outcome="unavailable").inc()
            raise VaultError(
                f"TLS verification of Vault at {self._settings.url} failed; check vault.ca_pem "
                "or vault.ca_file",
                cluster=cluster,
            ) from exc
        except requests.exceptions.RequestException as exc:
            VAULT_REQUESTS.labels(operation=operation, outcome="unavailable").inc()
            raise VaultError(
                f"Vault at {self._settings.url} is unreachable for {operation} ({where}): "
                f"{type(exc).__name__}",
                cluster=cluster,
            ) from exc
        VAULT_REQUESTS.labels(operation=operation, outcome="ok").inc()
        return result


def _read_jwt(path: Path) -> str:
    try:
        jwt = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CredentialError(
            f"cannot read the service account token for Vault's Kubernetes auth at {path}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from exc
    if not jwt:
        raise CredentialError(f"the service account token file {path} is empty")
    return jwt


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _outcome(status: int | None) -> str:
    if status in _DENIED:
        return "denied"
    if status == 404:
        return "not_found"
    if status is None or status >= 500 or status == 429:
        return "unavailable"
    return "error"


def _describe(operation: str, where: str, status: int | None, exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    detail = ", ".join(str(e) for e in errors) if isinstance(errors, list) and errors else ""
    detail = redact_text(detail)[:300]
    code = f"HTTP {status}" if status is not None else "an unexpected answer"
    hint = {
        401: "the token was refused",
        403: "permission denied: check the Vault policy of the dispatcher's role",
        404: "nothing at this path: check the mount and path",
    }.get(status or 0, "")
    parts = [p for p in (detail, hint) if p]
    return f"Vault {operation} ({where}) failed with {code}" + (
        f": {'; '.join(parts)}" if parts else ""
    )
