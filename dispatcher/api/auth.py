"""Who is calling: a bearer token to a ``Principal`` (a tenant and its policy).

Two methods, tried in this order (``service.auth``):

1. **Static tokens**: the SHA-256 of the presented token is compared, in constant time
   (``hmac.compare_digest``), with every configured hash; each hash names a tenant.
2. **Kubernetes TokenReview** against the in-plane cluster, for the dispatcher's own
   audience: an Airflow worker sends its projected ServiceAccount token; the tenant is the
   one listing ``namespace/name`` (or ``namespace/*``) in its ``callers``. Answers are
   remembered briefly (``cache_seconds``, at most ``cache_size`` tokens, keyed by the
   token's hash), refusals for at most 5 s.

With neither configured the service runs only in ``insecure_development_mode``, where every
caller is an administrator (``Principal`` without a policy).

Refusals are ``Unauthenticated`` (401: no token, an unknown one, one the API server
refused, with its reason) or ``Forbidden`` (403: a valid identity no tenant claims).
Messages never carry the token.

I/O: TokenReview requests through the in-plane cluster's ``Connection``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes.client import AuthenticationV1Api

from dispatcher.clusters import Connection
from dispatcher.core.tenancy import Principal, TenantPolicy
from dispatcher.errors import Forbidden, Problem, Unauthenticated
from dispatcher.settings import AuthSettings

__all__ = ["DEVELOPMENT_PRINCIPAL", "Authenticator", "Review", "TokenReviewer", "token_hash"]

log = structlog.get_logger("dispatcher.api.auth")

#: Every caller of a service in ``insecure_development_mode``.
DEVELOPMENT_PRINCIPAL = Principal(tenant=None, policy=None, identity="unauthenticated")

_SA_PREFIX = "system:serviceaccount:"
_NEGATIVE_CACHE_SECONDS = 5.0


def token_hash(token: str) -> str:
    """The SHA-256 (hex) of a token, as ``service.auth.static_tokens`` stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Review:
    """The API server's answer about one token."""

    authenticated: bool
    username: str = ""
    error: str = ""


class TokenReviewer:
    """Asks a cluster's TokenReview API about tokens for one audience."""

    def __init__(self, connection: Connection, audience: str) -> None:
        self._connection = connection
        self._audience = audience

    def __call__(self, token: str) -> Review:
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self._audience]},
        }

        def call(api: Any, timeout: tuple[float, float]) -> Any:
            # A dict serialises as the model would (as the other Connection calls pass).
            return AuthenticationV1Api(api).create_token_review(
                body,  # type: ignore[arg-type,unused-ignore]
                _preload_content=False,
                _request_timeout=timeout,
            )

        answer = self._connection.request("create", "review a ServiceAccount token", call)
        status = answer.get("status") or {}
        user = status.get("user") or {}
        audiences = status.get("audiences") or []
        authenticated = bool(status.get("authenticated"))
        if authenticated and self._audience not in audiences:
            return Review(False, error=f"the token is not for audience {self._audience!r}")
        return Review(
            authenticated, str(user.get("username") or ""), str(status.get("error") or "")
        )


class _Cache:
    """Reviews by token hash, each until its deadline; the oldest go first when full."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Review]] = OrderedDict()

    def get(self, key: str) -> Review | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: str, review: Review, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + seconds, review)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Authenticator:
    """Turns an ``Authorization`` header into a ``Principal``, or refuses it.

    ``review`` is the TokenReview call (``None`` when the method is off; a fake in tests);
    ``clock`` times the cache (``# fake for tests``).
    """

    def __init__(
        self,
        settings: AuthSettings,
        tenants: Mapping[str, TenantPolicy],
        review: Callable[[str], Review] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._tenants = dict(tenants)
        self._hashes = tuple((t.sha256.encode(), t.tenant) for t in settings.static_tokens)
        self._review = review
        review_settings = settings.token_review
        self._cache_seconds = review_settings.cache_seconds if review_settings else 0.0
        self._cache = _Cache(review_settings.cache_size if review_settings else 1, clock)

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return DEVELOPMENT_PRINCIPAL
        token = _bearer(authorization)
        tenant = self._static(token)
        if tenant is not None:
            return self._principal(tenant, f"token:{tenant}")
        if self._review is None:
            raise Unauthenticated("the bearer token is not valid")
        review = self._reviewed(token, self._review)
        if not review.authenticated:
            why = f": {review.error}" if review.error else ""
            raise Unauthenticated(f"the ServiceAccount token was refused{why}")
        return self._service_account(review.username)

    def _static(self, token: str) -> str | None:
        presented = token_hash(token).encode()
        found: str | None = None
        # Every hash is compared, so the time taken says nothing about which one matched.
        for digest, tenant in self._hashes:
            if hmac.compare_digest(presented, digest) and found is None:
                found = tenant
        return found

    def _reviewed(self, token: str, review: Callable[[str], Review]) -> Review:
        key = token_hash(token)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = review(token)
        seconds = (
            self._cache_seconds
            if answer.authenticated
            else min(self._cache_seconds, _NEGATIVE_CACHE_SECONDS)
        )
        self._cache.put(key, answer, seconds)
        return answer

    def _service_account(self, username: str) -> Principal:
        parts = username.removeprefix(_SA_PREFIX).split(":")
        if not username.startswith(_SA_PREFIX) or len(parts) != 2:
            raise Forbidden(
                [
                    Problem(
                        "",
                        f"{username!r} is not a ServiceAccount; only ServiceAccounts "
                        "of the in-plane cluster authenticate with tokens it reviews",
                    )
                ]
            )
        namespace, name = parts
        for tenant, policy in sorted(self._tenants.items()):
            if policy.admits(namespace, name):
                return self._principal(tenant, f"serviceaccount:{namespace}/{name}")
        raise Forbidden(
            [
                Problem(
                    "",
                    f"ServiceAccount {namespace}/{name} authenticated, but no tenant lists it; "
                    f"add {namespace}/{name} (or {namespace}/*) to a tenant's callers "
                    "(tenants.<name>.callers)",
                )
            ]
        )

    def _principal(self, tenant: str, identity: str) -> Principal:
        policy = self._tenants.get(tenant)
        if policy is None:  # settings validation prevents it; refuse rather than widen
            raise Forbidden([Problem("", f"tenant {tenant!r} is not configured (tenants)")])
        return Principal(tenant=tenant, policy=policy, identity=identity)


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
    return token
