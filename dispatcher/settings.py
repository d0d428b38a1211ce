"""The dispatcher's one settings model, read from a YAML file and ``DISPATCHER_*`` variables.

``load_settings(path)`` reads the YAML file at ``path`` (or at ``$DISPATCHER_CONFIG``), then
lets the environment override it: ``DISPATCHER_VAULT__URL=...`` sets ``vault.url``
(``__`` separates nesting levels; lists take JSON). Invalid settings raise ``ConfigError``
listing every problem at its field path (``clusters[1].credentials.vault_kv.path: field
required``), so a bad deployment fails at start and says everything that is wrong at once.

Secrets (Vault tokens, AppRole secret ids) are ``SecretStr``: they print as ``**********``
and never appear in errors. Cluster kubeconfigs are never in this file, only where to find
them (a file, a Vault KV entry, Vault's Kubernetes secrets engine).

I/O: ``load_settings`` reads one file and the process environment; nothing else here does.
Sections are nested models; add new ones as fields of ``Settings``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dispatcher.core import ClusterInfo, ClusterRole, CostTable, PodDefaults, RoutingPolicy
from dispatcher.core.copies import CopyPolicy, Registry, VaultObject
from dispatcher.core.dependencies import DependencyKind
from dispatcher.core.fairshare import FairShareSettings
from dispatcher.core.names import DNSLabel, DNSSubdomain, LabelKey, LabelValue
from dispatcher.core.podsecurity import PodSecurity
from dispatcher.core.tenancy import TenantPolicy
from dispatcher.errors import ConfigError, Problem

__all__ = [
    "CONFIG_ENV",
    "AuthSettings",
    "ClientSettings",
    "ClusterSettings",
    "ConsoleSettings",
    "Credentials",
    "InClusterCredentials",
    "InsecureAllowances",
    "KubeconfigFileCredentials",
    "ServiceSettings",
    "Settings",
    "StaticToken",
    "TokenReviewAuth",
    "TracingSettings",
    "VaultAppRoleAuth",
    "VaultAuth",
    "VaultKVCredentials",
    "VaultKVRef",
    "VaultKubernetesAuth",
    "VaultKubernetesSecretsCredentials",
    "VaultSettings",
    "VaultTokenAuth",
    "load_fair_share",
    "load_settings",
]

#: Environment variable naming the YAML settings file.
CONFIG_ENV = "DISPATCHER_CONFIG"

_SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_url(url: str, *, allow_http: bool, flag: str) -> str | None:
    """A problem with ``url``, or ``None``; plain http only when ``flag`` allows it."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https:// URL"
    if parts.scheme == "http" and not allow_http:
        return f"plain http is refused; use https:// (or set {flag}: true for tests)"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


def _exactly_one(model: BaseModel, options: tuple[str, ...]) -> None:
    chosen = [name for name in options if getattr(model, name) is not None]
    if len(chosen) != 1:
        found = f" (found: {', '.join(chosen)})" if chosen else ""
        raise ValueError(f"set exactly one of {', '.join(options)}{found}")


# ----------------------------------------------------------------------------- credentials


class InClusterCredentials(_Section):
    """The pod's own service account; only for the in-plane cluster."""


class KubeconfigFileCredentials(_Section):
    """A kubeconfig file mounted into the dispatcher (e.g. from a Secret)."""

    path: Path
    context: str | None = None


class VaultKVRef(_Section):
    """One field of a Vault KV v2 entry."""

    mount: str = Field(default="secret", min_length=1)
    path: str = Field(min_length=1)
    field: str = Field(default="ca.crt", min_length=1)
    version: int | None = Field(default=None, ge=1)


class VaultKVCredentials(_Section):
    """A kubeconfig stored in Vault KV v2 (``mount``/``path``, key ``field``)."""

    mount: str = Field(default="secret", min_length=1)
    path: str = Field(min_length=1)
    field: str = Field(default="kubeconfig", min_length=1)
    #: Pin a KV version; ``None`` reads the latest.
    version: int | None = Field(default=None, ge=1)
    #: Which context of the kubeconfig to use; ``None`` takes its current-context.
    context: str | None = None


class VaultKubernetesSecretsCredentials(_Section):
    """Short-lived service account tokens from Vault's Kubernetes secrets engine."""

    mount: str = Field(default="kubernetes", min_length=1)
    role: str = Field(min_length=1)
    kubernetes_namespace: DNSLabel
    #: The cluster's API server, e.g. ``https://gpu-a100.example.com:6443``.
    server: str
    #: The API server's CA bundle, inline or from Vault KV; neither means the system CAs.
    ca_pem: str | None = None
    ca_from_kv: VaultKVRef | None = None
    ttl_seconds: int = Field(default=3600, ge=600, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _one_ca(self) -> Self:
        if self.ca_pem is not None and self.ca_from_kv is not None:
            raise ValueError("set ca_pem or ca_from_kv, not both")
        if self.ca_pem is not None and "-----BEGIN CERTIFICATE-----" not in self.ca_pem:
            raise ValueError("ca_pem must hold PEM certificates (-----BEGIN CERTIFICATE-----)")
        return self


class Credentials(_Section):
    """How to reach a cluster: set exactly one of the four sources."""

    in_cluster: InClusterCredentials | None = None
    kubeconfig_file: KubeconfigFileCredentials | None = None
    vault_kv: VaultKVCredentials | None = None
    vault_kubernetes_secrets: VaultKubernetesSecretsCredentials | None = None

    @model_validator(mode="before")
    @classmethod
    def _in_cluster_shorthand(cls, data: Any) -> Any:
        # `in_cluster: true` reads better in YAML than `in_cluster: {}`.
        if isinstance(data, Mapping) and data.get("in_cluster") is True:
            return {**data, "in_cluster": {}}
        return data

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        _exactly_one(
            self, ("in_cluster", "kubeconfig_file", "vault_kv", "vault_kubernetes_secrets")
        )
        return self

    @property
    def uses_vault(self) -> bool:
        return self.vault_kv is not None or self.vault_kubernetes_secrets is not None


class InsecureAllowances(_Section):
    """Escape hatches for test clusters; all refused by default."""

    allow_http: bool = False
    allow_insecure_skip_tls_verify: bool = False
    #: Let the API server be at a loopback (127.0.0.0/8, ::1, localhost), link-local
    #: (169.254.0.0/16, fe80::/10), unspecified (0.0.0.0, ::) or cloud metadata address
    #: (169.254.169.254, fd00:ec2::254, metadata.google.internal). Judged on the URL at
    #: vetting and on the address actually connected to, so DNS cannot sneak one in.
    allow_private_addresses: bool = False


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _fingerprints(value: Any) -> Any:
    """One fingerprint or a list; ``sha256:`` prefix, colons and case are forgiven."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return value
    out = []
    for item in value:
        if not isinstance(item, str):
            return value
        text = item.strip().lower().removeprefix("sha256:").replace(":", "")
        if not _SHA256_HEX.fullmatch(text):
            raise ValueError(
                "must be the SHA-256 of the CA certificate's DER bytes, 64 hex digits "
                "(e.g. `openssl x509 -in ca.crt -outform DER | sha256sum`)"
            )
        out.append(text)
    return tuple(out)


class ClusterPin(_Section):
    """What the cluster's credential must point at; one from Vault that points elsewhere
    is refused (``server-mismatch``, ``ca-mismatch``) and the cluster reported refused."""

    #: The API server URL, compared after normalising scheme and host case, the default
    #: port and a trailing slash.
    server: str | None = None
    #: SHA-256 fingerprints (of the DER bytes) the CA certificates may have: every
    #: certificate of the credential's CA bundle must be one of them (list two to rotate).
    ca_sha256: Annotated[tuple[str, ...], BeforeValidator(_fingerprints)] = ()

    @field_validator("server")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        if value is not None:
            problem = _check_url(value, allow_http=True, flag="")
            if problem:
                raise ValueError(problem)
        return value


class RefusedRetry(_Section):
    """How often a refused credential is fetched again (capped exponential, jittered):
    someone may have fixed it, but asking Vault every second for it helps nobody."""

    base_seconds: float = Field(default=5.0, gt=0, le=3600)
    max_seconds: float = Field(default=300.0, gt=0, le=86_400)
    jitter: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_seconds < self.base_seconds:
            raise ValueError("max_seconds must be at least base_seconds")
        return self


class ClientSettings(_Section):
    """Kubernetes API client limits for one cluster."""

    qps: float = Field(default=20.0, gt=0, le=10_000)
    burst: int = Field(default=40, ge=1, le=100_000)
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    read_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: Watch every running pod of the cluster (not only ours) to see its real free capacity;
    #: off means only the dispatcher's own pods count as usage (a cluster used by nothing else).
    watch_all_pods: bool = True

    @model_validator(mode="after")
    def _burst_covers_qps(self) -> Self:
        if self.burst < self.qps:
            raise ValueError(f"burst ({self.burst}) must be at least qps ({self.qps})")
        return self


class UnreachablePolicy(_Section):
    """What happens to a job running on a cluster that stopped answering.

    ``wait`` (the default): the job stays where it is, with a condition saying so, until
    the cluster answers again; its task never runs twice. ``relaunch``: after
    ``relaunch_after_seconds`` the job is launched elsewhere while its old pod may still
    run there (at-least-once: the overlap is counted in
    ``dispatcher_overlapping_attempts_total`` and the old pod deleted when the cluster
    comes back).
    """

    action: Literal["wait", "relaunch"] = "wait"
    relaunch_after_seconds: float = Field(default=600.0, gt=0, le=86400)


_REGISTRY_SERVER = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?")


class PlaneCopies(_Section):
    """Secrets and ConfigMaps copied from the in-plane cluster's task namespace, by name
    pattern (``fnmatch``: ``"*"`` for all, ``"db-*"``); none by default."""

    secrets: tuple[Annotated[str, Field(min_length=1, max_length=253)], ...] = ()
    configmaps: tuple[Annotated[str, Field(min_length=1, max_length=253)], ...] = ()


class VaultCopy(_Section):
    """A Secret or ConfigMap filled from one Vault KV v2 entry: each of ``keys`` is a
    field of the entry (``mount``/``path``)."""

    kind: Literal["Secret", "ConfigMap"] = "Secret"
    name: DNSSubdomain
    mount: str = Field(default="secret", min_length=1)
    path: str = Field(min_length=1)
    keys: tuple[Annotated[str, Field(min_length=1, pattern=r"^[-._a-zA-Z0-9]+$")], ...] = Field(
        min_length=1
    )
    #: The Secret's ``type`` (``Opaque`` by default; ignored for ConfigMaps).
    type: str = Field(default="Opaque", min_length=1)


class CopyDependencies(_Section):
    """Which of a task's missing Secrets and ConfigMaps the dispatcher may materialise in
    this cluster, just before the pod (``dispatcher.core.copies``). PVCs and ServiceAccounts
    are never copied."""

    from_plane: PlaneCopies = Field(default_factory=PlaneCopies)
    from_vault: tuple[VaultCopy, ...] = ()

    @field_validator("from_vault")
    @classmethod
    def _distinct(cls, value: tuple[VaultCopy, ...]) -> tuple[VaultCopy, ...]:
        seen: set[tuple[str, str]] = set()
        for item in value:
            if (item.kind, item.name) in seen:
                raise ValueError(f"{item.kind} {item.name} is listed twice")
            seen.add((item.kind, item.name))
        return value


class RegistryKV(_Section):
    """Where a registry's ``.dockerconfigjson`` lives: one field of a Vault KV v2 entry."""

    mount: str = Field(default="secret", min_length=1)
    path: str = Field(min_length=1)
    field: str = Field(default=".dockerconfigjson", min_length=1)


class RegistryCredential(_Section):
    """Pull credentials for an image registry, kept in Vault: a task whose image comes from
    ``server`` gets a pull Secret in this cluster, added to its pod's imagePullSecrets."""

    #: ``host[:port]``, optionally with a path prefix (``ghcr.io``, ``ghcr.io/acme``).
    server: str = Field(max_length=200)
    vault_kv: RegistryKV

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        if not _REGISTRY_SERVER.fullmatch(value):
            raise ValueError(
                "must be a registry host, optionally with a port and path prefix "
                "(e.g. ghcr.io, registry.example.com:5000/team), without a scheme"
            )
        return value


class ClusterSettings(_Section):
    """One cluster of the inventory."""

    name: DNSLabel
    role: ClusterRole = ClusterRole.EXTERNAL
    credentials: Credentials
    allow_insecure: InsecureAllowances = Field(default_factory=InsecureAllowances)
    #: The API server URL and/or CA a credential from Vault must have (none by default).
    pin: ClusterPin = Field(default_factory=ClusterPin)
    #: Backoff between fetches of a credential that our rules refused.
    refused_retry: RefusedRetry = Field(default_factory=RefusedRetry)
    #: Cluster labels tasks can select on, e.g. ``topology.kubernetes.io/region``.
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    cost: CostTable = Field(default_factory=CostTable)
    client: ClientSettings = Field(default_factory=ClientSettings)
    pod_defaults: PodDefaults = Field(default_factory=PodDefaults)
    #: The Pod Security Standard tasks meet here and the taints they may tolerate
    #: (issue 14: pod security at submission; see ``dispatcher.core.podsecurity``).
    pod_security: PodSecurity = Field(default_factory=PodSecurity)
    #: A running job on this cluster when it stops answering: wait (default) or relaunch.
    on_unreachable: UnreachablePolicy = Field(default_factory=UnreachablePolicy)
    #: Watch the names (and Secret/ConfigMap key names, never values) of Secrets,
    #: ConfigMaps, PVCs and ServiceAccounts in the task namespaces (``pod_defaults``'
    #: ``namespace`` and ``allowed_namespaces``), and route a task here only if what its
    #: pod names is there. Needs list and watch on those resources in those namespaces.
    check_dependencies: bool = True
    #: What the dispatcher may copy here of a task's missing dependencies (none by default).
    copy_dependencies: CopyDependencies = Field(default_factory=CopyDependencies)
    #: Image registries whose pull credentials the dispatcher brings here from Vault.
    registries: tuple[RegistryCredential, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.role is ClusterRole.IN_PLANE and self.copies().enabled:
            field = "copy_dependencies" if not self.registries else "registries"
            problems.append(
                Problem(
                    field,
                    "the in-plane cluster is where copies come from; copy to external "
                    "clusters only",
                )
            )
        servers = [r.server for r in self.registries]
        for index, server in enumerate(servers):
            if server in servers[:index]:
                problems.append(Problem(f"registries[{index}].server", f"{server} is listed twice"))
        if self.credentials.in_cluster is not None and self.role is not ClusterRole.IN_PLANE:
            problems.append(
                Problem(
                    "credentials.in_cluster",
                    "in-cluster credentials reach only the dispatcher's own cluster; "
                    "use them with role: in-plane",
                )
            )
        secrets_engine = self.credentials.vault_kubernetes_secrets
        if secrets_engine is not None:
            problem = _check_url(
                secrets_engine.server,
                allow_http=self.allow_insecure.allow_http,
                flag="allow_insecure.allow_http",
            )
            if problem:
                problems.append(Problem("credentials.vault_kubernetes_secrets.server", problem))
        if problems:
            raise ConfigError(problems)
        return self

    def info(self) -> ClusterInfo:
        """What routing needs to know about this cluster."""
        return ClusterInfo(
            name=self.name,
            role=self.role,
            labels=dict(self.labels),
            cost=self.cost,
            pod_defaults=self.pod_defaults,
            pod_security=self.pod_security,
            check_dependencies=self.check_dependencies,
            copies=self.copies(),
        )

    def copies(self) -> CopyPolicy:
        """The copy policy routing and the dispatcher apply to this cluster."""
        plane = self.copy_dependencies.from_plane
        return CopyPolicy(
            from_plane={
                kind: patterns
                for kind, patterns in (
                    (DependencyKind.SECRET, plane.secrets),
                    (DependencyKind.CONFIG_MAP, plane.configmaps),
                )
                if patterns
            },
            from_vault=tuple(
                VaultObject(
                    DependencyKind(item.kind),
                    item.name,
                    item.mount,
                    item.path,
                    item.keys,
                    item.type,
                )
                for item in self.copy_dependencies.from_vault
            ),
            registries=tuple(
                Registry(r.server, r.vault_kv.mount, r.vault_kv.path, r.vault_kv.field)
                for r in self.registries
            ),
        )


# ----------------------------------------------------------------------------- vault


class VaultKubernetesAuth(_Section):
    """Log in with the pod's service account token (Vault's Kubernetes auth method)."""

    role: str = Field(min_length=1)
    mount: str = Field(default="kubernetes", min_length=1)
    jwt_path: Path = _SERVICE_ACCOUNT_TOKEN


class VaultAppRoleAuth(_Section):
    role_id: str = Field(min_length=1)
    secret_id: SecretStr
    mount: str = Field(default="approle", min_length=1)


class VaultTokenAuth(_Section):
    """A fixed token; for development. Prefer ``DISPATCHER_VAULT__AUTH__TOKEN__TOKEN``."""

    token: SecretStr


class VaultAuth(_Section):
    """How the dispatcher logs in to Vault: set exactly one."""

    kubernetes: VaultKubernetesAuth | None = None
    approle: VaultAppRoleAuth | None = None
    token: VaultTokenAuth | None = None

    @model_validator(mode="after")
    def _exactly_one_method(self) -> Self:
        _exactly_one(self, ("kubernetes", "approle", "token"))
        return self


class VaultSettings(_Section):
    #: Declared before ``url`` so the URL check can see it.
    allow_http: bool = False
    url: str
    auth: VaultAuth
    #: Vault Enterprise / OpenBao namespace, if any.
    namespace: str | None = None
    #: CA bundle for Vault's TLS, inline or as a file; neither means the system CAs.
    ca_pem: str | None = None
    ca_file: Path | None = None
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    read_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    #: Renew or re-fetch a lease or token when this share of its TTL is left.
    renew_ahead_fraction: float = Field(default=0.25, gt=0, lt=1)

    @field_validator("url")
    @classmethod
    def _safe_url(cls, url: str, info: ValidationInfo) -> str:
        problem = _check_url(
            url, allow_http=info.data.get("allow_http", False), flag="vault.allow_http"
        )
        if problem:
            raise ValueError(problem)
        return url

    @model_validator(mode="after")
    def _one_ca(self) -> Self:
        if self.ca_pem is not None and self.ca_file is not None:
            raise ValueError("set ca_pem or ca_file, not both")
        return self


# ----------------------------------------------------------------------------- auth


class StaticToken(_Section):
    """A bearer token, stored as its SHA-256 (hex), standing for one tenant. Make one with
    ``python -c 'import secrets; print(secrets.token_urlsafe(32))'`` and hash it with
    ``printf %s "$TOKEN" | sha256sum``; only the hash goes into the settings."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: DNSLabel

    @field_validator("sha256", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class TokenReviewAuth(_Section):
    """ServiceAccount tokens of the in-plane cluster, checked with its TokenReview API: an
    Airflow worker sends its projected token for ``audience`` (a token for the API server
    itself, or for any other audience, is refused)."""

    audience: str = Field(default="kube-dispatcher", min_length=1, max_length=253)
    #: The cluster whose API server reviews the tokens; the in-plane cluster by default.
    cluster: DNSLabel | None = None
    #: An accepted token is trusted this long without asking again (refusals: at most 5 s).
    cache_seconds: float = Field(default=10.0, ge=0, le=300)
    #: At most this many reviewed tokens are remembered.
    cache_size: int = Field(default=4096, ge=1, le=1_000_000)


class AuthSettings(_Section):
    """How API callers authenticate. At least one method, or the service refuses to start
    unless ``insecure_development_mode`` is set (every caller is then an administrator)."""

    token_review: TokenReviewAuth | None = None
    static_tokens: tuple[StaticToken, ...] = ()
    #: No authentication at all, for local development only; logged loudly at every start.
    insecure_development_mode: bool = False

    @field_validator("static_tokens")
    @classmethod
    def _distinct(cls, tokens: tuple[StaticToken, ...]) -> tuple[StaticToken, ...]:
        # One token, one tenant: a hash listed twice is at best a leftover, at worst a
        # token that authenticates as whichever entry happens to come first.
        seen: dict[str, int] = {}
        for index, token in enumerate(tokens):
            if token.sha256 in seen:
                raise ValueError(
                    f"entries {seen[token.sha256]} and {index} have the same sha256; "
                    "each token must appear once"
                )
            seen[token.sha256] = index
        return tokens

    @property
    def enabled(self) -> bool:
        return self.token_review is not None or bool(self.static_tokens)

    def problems(self) -> list[Problem]:
        """Why the service must not start with these settings (none: it may)."""
        if self.enabled and self.insecure_development_mode:
            return [
                Problem(
                    "service.auth.insecure_development_mode",
                    "cannot be combined with an authentication method; remove one",
                )
            ]
        if not self.enabled and not self.insecure_development_mode:
            return [
                Problem(
                    "service.auth",
                    "no authentication method: set token_review (ServiceAccount tokens of "
                    "the in-plane cluster) and/or static_tokens (sha256 hashes, each naming "
                    "a tenant); insecure_development_mode: true runs without any, for local "
                    "development only",
                )
            ]
        return []


class ConsoleSettings(_Section):
    """The read-only web console at ``/ui`` (``dispatcher.api.console``): who signs in is
    authenticated as API callers are, and sees what their tenant may read."""

    enabled: bool = True
    #: The sign-in cookie carries the ``Secure`` attribute (sent over https only). Turn it
    #: off only where the service is reached over plain http on a trusted network.
    secure_cookie: bool = True
    #: How long a sign-in lasts in the browser; every request is authenticated again
    #: anyway, so a token that stops being valid stops the session at once.
    session_seconds: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    #: Lines of a job's container log its page shows (the last ones).
    log_tail_lines: int = Field(default=200, ge=1, le=10_000)
    #: At most this many jobs on one page of the jobs list and of the queue.
    max_jobs: int = Field(default=500, ge=1, le=10_000)
    #: Live-update streams (Server-Sent Events) open at once, per caller and in all.
    max_streams_per_client: int = Field(default=20, ge=1, le=1000)
    max_streams: int = Field(default=500, ge=1, le=100_000)


class ServiceSettings(_Section):
    """How the dispatcher service itself runs: API, job state, failover, cleanup."""

    host: str = "0.0.0.0"  # noqa: S104 - a server in a pod listens on all interfaces
    port: int = Field(default=8080, ge=1, le=65535)
    #: Where job records (DispatchJobs) and the leader Lease live: the in-plane cluster by
    #: default; must name one of ``clusters``.
    state_cluster: DNSLabel | None = None
    state_namespace: DNSLabel = "kube-dispatcher"
    #: Who may call the API (required: the service refuses to start without a method).
    auth: AuthSettings = Field(default_factory=AuthSettings)
    #: The web console (``/ui``).
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    #: Serve ``/metrics`` on this port of its own (no authentication; metrics carry no
    #: secret), and not on the API port; unset: on the API port, without authentication.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: Larger request bodies are refused (413).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: JSON nested deeper than this is refused (422); a task spec needs about 10.
    max_json_depth: int = Field(default=64, ge=8, le=1000)
    #: How often credentials (the Vault token, leases, kubeconfigs) are checked for
    #: renewal ahead of expiry, whether or not any request needs them.
    credential_refresh_seconds: float = Field(default=10.0, gt=0, le=300)
    #: How often the settings file is checked for a change of its ``fair_share`` section,
    #: which then applies without a restart (other sections need one).
    settings_reload_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: Long polls (``GET /v1/jobs/{id}/wait``) one caller (``Principal.identity``: a static
    #: token's tenant, or a ServiceAccount) may have open at once; more are a 429 with
    #: ``Retry-After``. A long poll holds no thread (it awaits the job's change), so the
    #: bound is about fairness and memory, not the server's worker threads.
    max_waits_per_client: int = Field(default=1000, ge=1, le=100_000)
    #: Log follows (``GET /v1/jobs/{id}/logs?follow=true``) one caller may have open at
    #: once; more are a 429 with ``Retry-After``.
    max_log_follows_per_client: int = Field(default=100, ge=1, le=10_000)
    #: Log follows this replica serves at once, all callers together; more are a 503 with
    #: ``Retry-After``. Each holds a thread of its own pool (never one of the worker
    #: threads ordinary requests use) and a stream from the pod's API server.
    max_log_follows: int = Field(default=200, ge=1, le=10_000)
    #: A pod still unschedulable this long moves to another cluster (a task's own
    #: ``schedule_timeout_seconds`` wins).
    schedule_timeout_seconds: float = Field(default=300.0, gt=0, le=86400)
    #: At most this many attempts per job (the first included): stops ping-pong.
    max_attempts: int = Field(default=3, ge=1, le=20)
    #: A create whose outcome was unknown (timeout, 5xx, 429) and whose pod was then found
    #: absent is sent again this many times, with capped exponential backoff, before the
    #: job tries another cluster.
    launch_retries: int = Field(default=5, ge=0, le=50)
    #: A finished job stays readable this long unless the client acknowledges it.
    finished_ttl_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    #: A finished pod that its ``on_finish_action`` deletes stays this long, or until the
    #: job is acknowledged, so that its log can still be read (0: delete at once).
    finished_pod_linger_seconds: float = Field(default=30.0, ge=0, le=86400)
    #: How often copied dependencies whose jobs have all ended are looked for and deleted
    #: in each cluster with a copy policy (also once after every restart). Jobs delete
    #: their copies when they end; this catches what a crash or a moved attempt left.
    copy_sweep_interval_seconds: float = Field(default=300.0, gt=0, le=86400)
    #: The largest ``/airflow/xcom/return.json`` read from a job's XCom sidecar (its log
    #: carries it base64-encoded; a kubelet rotates container logs at 10 MiB by default).
    max_xcom_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: Grace period given to a cancelled job's pod when its task sets no
    #: ``termination_grace_period``.
    cancel_grace_seconds: int = Field(default=30, ge=0, le=3600)
    #: A task's own ``termination_grace_period`` is its cancel grace, up to this.
    max_cancel_grace_seconds: int = Field(default=600, ge=0, le=86400)

    def cancel_grace(self, termination_grace_period: int | None) -> int:
        """The grace a cancelled (or moved) pod gets: the task's own, bounded by
        ``max_cancel_grace_seconds``, else ``cancel_grace_seconds``."""
        if termination_grace_period is None:
            return self.cancel_grace_seconds
        return min(termination_grace_period, self.max_cancel_grace_seconds)

    #: A cancel request waits this long for the pod to be gone before it answers
    #: (``cancelled``); after it, the answer is ``cancelling`` and the deletion goes on.
    cancel_answer_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    #: Upper bound of the wait between dispatch cycles when nothing wakes the loop.
    cycle_interval_seconds: float = Field(default=5.0, gt=0, le=300)
    #: Leader election (a coordination.k8s.io Lease in the state cluster and namespace).
    leader_election: bool = False
    lease_name: DNSLabel = "kube-dispatcher"
    lease_duration_seconds: float = Field(default=15.0, gt=1, le=300)
    #: The leader stops dispatching when it could not renew for this long; must be shorter
    #: than the lease duration (the difference is the safety margin). Default: two thirds
    #: of the lease duration (10 s of 15 s).
    lease_renew_deadline_seconds: float | None = Field(default=None, gt=0, le=300)
    #: Time between two election rounds (renewals, and candidates' reads); must be shorter
    #: than the renew deadline. Default: 2 s, or a fifth of the renew deadline if shorter.
    lease_retry_period_seconds: float | None = Field(default=None, gt=0, le=60)
    log_json: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def renew_deadline_seconds(self) -> float:
        """``lease_renew_deadline_seconds`` or its default."""
        if self.lease_renew_deadline_seconds is not None:
            return self.lease_renew_deadline_seconds
        return self.lease_duration_seconds * 2 / 3

    @property
    def retry_period_seconds(self) -> float:
        """``lease_retry_period_seconds`` or its default."""
        if self.lease_retry_period_seconds is not None:
            return self.lease_retry_period_seconds
        return min(2.0, self.renew_deadline_seconds / 5)

    @model_validator(mode="after")
    def _lease_timing(self) -> Self:
        # client-go's rule: retry period < renew deadline < lease duration.
        problems = []
        if self.renew_deadline_seconds >= self.lease_duration_seconds:
            problems.append(
                Problem(
                    "lease_renew_deadline_seconds",
                    f"must be less than lease_duration_seconds ({self.lease_duration_seconds:g}"
                    f"), or a second leader could start before the first one stops",
                )
            )
        elif self.retry_period_seconds >= self.renew_deadline_seconds:
            problems.append(
                Problem(
                    "lease_retry_period_seconds",
                    f"must be less than the renew deadline ({self.renew_deadline_seconds:g}), "
                    "so that a leader whose renew failed tries again before it gives up",
                )
            )
        if problems:
            raise ConfigError(problems)
        return self


# ----------------------------------------------------------------------------- settings


class TracingSettings(_Section):
    """OpenTelemetry traces of every job (``dispatcher.tracing``): off unless enabled."""

    enabled: bool = False
    #: The collector's OTLP/HTTP traces endpoint. Plain http is allowed (a collector is
    #: usually a sidecar or node agent on localhost); spans carry no secret.
    endpoint: str = "http://localhost:4318/v1/traces"
    service_name: str = Field(default="kube-dispatcher", min_length=1, max_length=255)
    #: How long finished spans are batched before they are sent.
    export_delay_seconds: float = Field(default=5.0, gt=0, le=300)
    export_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL (the OTLP/HTTP traces path)")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials")
        return value


class Settings(BaseSettings):
    """Everything the dispatcher is configured with."""

    model_config = SettingsConfigDict(
        env_prefix="DISPATCHER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    clusters: tuple[ClusterSettings, ...]
    routing: RoutingPolicy = Field(default_factory=RoutingPolicy)
    #: Tenants by name: who they are (``callers``, or a static token naming them) and what
    #: their tasks may ask for (``dispatcher.core.tenancy.TenantPolicy``).
    tenants: dict[DNSLabel, TenantPolicy] = Field(default_factory=dict)
    #: Tenants' weights, quotas and cohorts, and reservations (docs/fair-share.md); the
    #: service re-reads this section from the settings file without a restart.
    fair_share: FairShareSettings = Field(default_factory=FairShareSettings)
    vault: VaultSettings | None = None
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("clusters")
    @classmethod
    def _some_cluster(cls, value: tuple[ClusterSettings, ...]) -> tuple[ClusterSettings, ...]:
        # A validator rather than min_length: pydantic would also report the length when a
        # cluster is invalid, adding a confusing error.
        if not value:
            raise ValueError("list at least one cluster")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init arguments; the environment overrides it.
        return env_settings, init_settings

    @model_validator(mode="wrap")
    @classmethod
    def _cross_checks(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # Checked on the raw input, so these problems are listed together with field
        # errors instead of only after those are fixed.
        problems = _cross_field_problems(data)
        try:
            settings = handler(data)
        except ValidationError as exc:
            if not problems:
                raise
            raise ConfigError([*Problem.from_validation_error(exc), *problems]) from None
        if problems:
            raise ConfigError(problems)
        return settings

    def cluster(self, name: str) -> ClusterSettings | None:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        return None

    def cluster_infos(self) -> dict[str, ClusterInfo]:
        return {cluster.name: cluster.info() for cluster in self.clusters}


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def _cross_field_problems(data: Any) -> list[Problem]:
    """Problems spanning sections: duplicate cluster names, two in-plane clusters, missing
    Vault, a state cluster or an Airflow connection's cluster that is not configured."""
    clusters = _get(data, "clusters")
    if not isinstance(clusters, list | tuple):
        return []
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    in_plane: int | None = None
    for index, cluster in enumerate(clusters):
        name = _get(cluster, "name")
        if isinstance(name, str):
            if name in first_seen:
                problems.append(
                    Problem(
                        f"clusters[{index}].name",
                        f"duplicate cluster name {name!r} (also clusters[{first_seen[name]}])",
                    )
                )
            first_seen.setdefault(name, index)
        if str(_get(cluster, "role")) == ClusterRole.IN_PLANE.value:
            if in_plane is not None:
                problems.append(
                    Problem(
                        f"clusters[{index}].role",
                        f"only one cluster can be in-plane (clusters[{in_plane}] is)",
                    )
                )
            else:
                in_plane = index
        credentials = _get(cluster, "credentials")
        uses_vault = credentials is not None and any(
            _get(credentials, key) is not None for key in ("vault_kv", "vault_kubernetes_secrets")
        )
        if uses_vault and _get(data, "vault") is None:
            problems.append(
                Problem(
                    "vault",
                    f"required: clusters[{index}] ({name}) reads its credentials from Vault",
                )
            )
        copies = _get(cluster, "copy_dependencies")
        if (_get(cluster, "registries") or (copies and _get(copies, "from_vault"))) and _get(
            data, "vault"
        ) is None:
            problems.append(
                Problem(
                    "vault",
                    f"required: clusters[{index}] ({name}) copies registry credentials or "
                    "dependencies from Vault",
                )
            )
    state = _get(_get(data, "service"), "state_cluster")
    if isinstance(state, str) and state and clusters and state not in first_seen:
        known = ", ".join(sorted(first_seen)) or "none"
        problems.append(
            Problem(
                "service.state_cluster",
                f"{state!r} is not one of the configured clusters ({known})",
            )
        )
    problems.extend(_tenant_problems(data, first_seen))
    problems.extend(_fair_share_problems(data, first_seen))
    connections = _get(_get(data, "routing"), "airflow_connections")
    for key, names in connections.items() if isinstance(connections, Mapping) else ():
        listed = [names] if isinstance(names, str) else names
        unknown = [n for n in listed if isinstance(n, str) and n not in first_seen]
        if isinstance(listed, list | tuple) and unknown and clusters:
            known = ", ".join(sorted(first_seen)) or "none"
            problems.append(
                Problem(
                    f"routing.airflow_connections[{key}]",
                    f"{', '.join(map(repr, unknown))} is not one of the configured clusters "
                    f"({known})",
                )
            )
    return problems


def _tenant_problems(data: Any, clusters: Mapping[str, int]) -> list[Problem]:
    """Tenants' clusters exist; static tokens name a tenant; a caller is one tenant's."""
    tenants = _get(data, "tenants")
    tenants = tenants if isinstance(tenants, Mapping) else {}
    problems: list[Problem] = []
    known = ", ".join(sorted(clusters)) or "none"
    owner: dict[str, str] = {}
    for name, tenant in tenants.items():
        listed = _get(tenant, "clusters")
        problems.extend(
            Problem(
                f"tenants.{name}.clusters",
                f"{cluster!r} is not one of the configured clusters ({known})",
            )
            for cluster in (listed if isinstance(listed, list | tuple) else ())
            if isinstance(cluster, str) and clusters and cluster not in clusters
        )
        callers = _get(tenant, "callers")
        for caller in callers if isinstance(callers, list | tuple) else ():
            if isinstance(caller, str) and caller in owner and owner[caller] != name:
                problems.append(
                    Problem(
                        f"tenants.{name}.callers",
                        f"{caller!r} is also a caller of tenant {owner[caller]!r}",
                    )
                )
            owner.setdefault(str(caller), str(name))
    auth = _get(_get(data, "service"), "auth")
    tokens = _get(auth, "static_tokens")
    for index, token in enumerate(tokens if isinstance(tokens, list | tuple) else ()):
        tenant = _get(token, "tenant")
        if isinstance(tenant, str) and tenant not in tenants:
            problems.append(
                Problem(
                    f"service.auth.static_tokens[{index}].tenant",
                    f"{tenant!r} is not one of the tenants "
                    f"({', '.join(sorted(map(str, tenants))) or 'none'})",
                )
            )
    return problems


def _fair_share_problems(data: Any, clusters: Mapping[str, int]) -> list[Problem]:
    """Per-cluster quotas name configured clusters."""
    tenants = _get(_get(data, "fair_share"), "tenants")
    problems: list[Problem] = []
    known = ", ".join(sorted(clusters)) or "none"
    for name, tenant in tenants.items() if isinstance(tenants, Mapping) else ():
        quotas = _get(tenant, "clusters")
        problems.extend(
            Problem(
                f"fair_share.tenants.{name}.clusters.{cluster}",
                f"{cluster!r} is not one of the configured clusters ({known})",
            )
            for cluster in (quotas if isinstance(quotas, Mapping) else ())
            if clusters and cluster not in clusters
        )
    return problems


def load_fair_share(path: str | Path) -> FairShareSettings:
    """Only the ``fair_share`` section, from the whole settings file at ``path`` checked as
    at start (a reload); raises ``ConfigError`` listing every problem."""
    return load_settings(path).fair_share


def _read_yaml(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError.single(
            "", f"cannot read the file: {exc.strerror}", source=source
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError.single("", f"not valid YAML{where}: {problem}", source=source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError.single("", "the top level must be a mapping of sections", source=source)
    return data


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the settings file (``path``, else ``$DISPATCHER_CONFIG``) and the environment.

    Raises ``ConfigError`` listing every problem found.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    data = _read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "the environment"
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(Problem.from_validation_error(exc), source=source) from None
