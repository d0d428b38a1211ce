"""Kubeconfig vetting: a kubeconfig is checked whole before any of it is used.

A kubeconfig can make a client run programs (``exec``, ``auth-provider``), read local files
(``tokenFile``, ``certificate-authority``, ``client-certificate``, ``client-key``), send
passwords (basic auth), talk through a proxy or skip TLS verification. The dispatcher reads
kubeconfigs from Vault and from mounted files, so each of those is an attack surface: this
module allows only inline material (a bearer token and/or an inline client certificate and
key, an inline CA) on an ``https://`` server, and refuses everything else it does not know.
``http://``, ``insecure-skip-tls-verify`` and loopback, link-local or metadata addresses
(``addresses.private_address``) pass only with the cluster's explicit ``InsecureAllowances``.
A cluster's ``ClusterPin`` ties the chosen context to the expected API server URL and/or CA
certificates (SHA-256 of each DER certificate): a kubeconfig that points elsewhere is
refused (``server-mismatch``, ``ca-mismatch``).

What passes is a frozen ``VettedKubeconfig``: the only thing ``clients.build_api_client``
accepts. Rejections raise ``KubeconfigRejected`` naming the cluster and every offending
field (``users[0].user.exec is refused: exec plugins would run a program``), never a
secret value, and a bounded ``RefusalReason`` (the first of its order that applies).

I/O: none; ``parse_kubeconfig`` parses text it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import yaml

from dispatcher.credentials.addresses import private_address
from dispatcher.errors import KubeconfigRejected, RefusalReason
from dispatcher.settings import ClusterPin, InsecureAllowances

__all__ = [
    "VettedKubeconfig",
    "ca_fingerprints",
    "parse_kubeconfig",
    "vet_kubeconfig",
    "vet_token_credentials",
]

#: Larger documents are refused before parsing (a kubeconfig is a few kilobytes).
MAX_KUBECONFIG_BYTES = 1024 * 1024

_TOP_LEVEL = frozenset(
    {"apiVersion", "kind", "clusters", "users", "contexts", "current-context", "preferences"}
    | {"extensions"}
)
_CONTEXT_FIELDS = frozenset({"cluster", "user", "namespace", "extensions"})
_CLUSTER_FIELDS = frozenset(
    {
        "server",
        "certificate-authority-data",
        "tls-server-name",
        "insecure-skip-tls-verify",
        "disable-compression",
        "extensions",
    }
)
_USER_FIELDS = frozenset({"token", "client-certificate-data", "client-key-data", "extensions"})

# Known dangerous fields and why; anything else unknown is refused as unknown.
_BASIC = "basic authentication is not supported; use a token or a client certificate"
_IMPERSONATION = "impersonation is not supported"
_REFUSED_USER_FIELDS = {
    "exec": ("exec plugins would run a program", RefusalReason.EXEC_PLUGIN),
    "auth-provider": (
        "auth-provider plugins would run a program or fetch tokens elsewhere",
        RefusalReason.EXEC_PLUGIN,
    ),
    "tokenFile": (
        "it names a local file; put the token inline as `token`",
        RefusalReason.LOCAL_FILE,
    ),
    "client-certificate": (
        "it names a local file; put the certificate inline as client-certificate-data",
        RefusalReason.LOCAL_FILE,
    ),
    "client-key": (
        "it names a local file; put the key inline as client-key-data",
        RefusalReason.LOCAL_FILE,
    ),
    "username": (_BASIC, RefusalReason.UNSUPPORTED),
    "password": (_BASIC, RefusalReason.UNSUPPORTED),
    "as": (_IMPERSONATION, RefusalReason.UNSUPPORTED),
    "as-uid": (_IMPERSONATION, RefusalReason.UNSUPPORTED),
    "as-groups": (_IMPERSONATION, RefusalReason.UNSUPPORTED),
    "as-user-extra": (_IMPERSONATION, RefusalReason.UNSUPPORTED),
}
_REFUSED_CLUSTER_FIELDS = {
    "certificate-authority": (
        "it names a local file; put the CA inline as certificate-authority-data",
        RefusalReason.LOCAL_FILE,
    ),
    "proxy-url": (
        "proxies are not supported; the dispatcher talks to the API server directly",
        RefusalReason.UNSUPPORTED,
    ),
}
_PRECEDENCE = {reason: rank for rank, reason in enumerate(RefusalReason)}

_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no spaces, newlines or header tricks
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class VettedKubeconfig:
    """Everything needed to reach one cluster, checked; secrets are left out of ``repr``."""

    cluster: str
    server: str
    #: PEM CA bundle; ``None`` means the system CAs.
    ca_pem: str | None = None
    token: str | None = field(default=None, repr=False)
    client_cert_pem: str | None = field(default=None, repr=False)
    client_key_pem: str | None = field(default=None, repr=False)
    namespace: str | None = None
    tls_server_name: str | None = None
    #: Only ever true when the cluster's ``allow_insecure_skip_tls_verify`` is set.
    insecure_skip_tls_verify: bool = False
    #: The cluster's ``allow_private_addresses``: whether connections may reach loopback,
    #: link-local or metadata addresses (``clients`` checks each connection's peer).
    allow_private_addresses: bool = False

    def __post_init__(self) -> None:
        if self.token is None and (self.client_cert_pem is None or self.client_key_pem is None):
            raise KubeconfigRejected(
                "no credential: set a token or a client certificate and key",
                cluster=self.cluster,
            )
        if (self.client_cert_pem is None) != (self.client_key_pem is None):
            raise KubeconfigRejected(
                "a client certificate needs its key and a key its certificate",
                cluster=self.cluster,
            )

    @property
    def uses_client_certificate(self) -> bool:
        return self.client_cert_pem is not None


class _Problems:
    """Collects every problem, so one rejection lists them all, and the gravest kind."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.kinds: set[RefusalReason] = set()

    def add(self, where: str, message: str, kind: RefusalReason = RefusalReason.INVALID) -> None:
        self.items.append(f"{where} {message}")
        self.kinds.add(kind)

    def refuse(self, where: str, why: str, kind: RefusalReason = RefusalReason.UNSUPPORTED) -> None:
        self.add(where, f"is refused: {why}", kind)

    def rejection(self, cluster: str) -> KubeconfigRejected:
        kind = min(self.kinds, key=_PRECEDENCE.__getitem__, default=RefusalReason.INVALID)
        return KubeconfigRejected("; ".join(self.items), cluster=cluster, refusal=kind)


def parse_kubeconfig(
    text: str,
    *,
    cluster: str,
    context: str | None = None,
    allow: InsecureAllowances | None = None,
    pin: ClusterPin | None = None,
) -> VettedKubeconfig:
    """Parse kubeconfig YAML and vet it (``vet_kubeconfig``).

    YAML errors report the position only: the offending line may hold a token.
    """
    if len(text.encode("utf-8", "replace")) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigRejected(
            f"the kubeconfig is larger than {MAX_KUBECONFIG_BYTES} bytes", cluster=cluster
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise KubeconfigRejected(f"not valid YAML{where}", cluster=cluster) from None
    return vet_kubeconfig(data, cluster=cluster, context=context, allow=allow, pin=pin)


def vet_kubeconfig(
    data: Any,
    *,
    cluster: str,
    context: str | None = None,
    allow: InsecureAllowances | None = None,
    pin: ClusterPin | None = None,
) -> VettedKubeconfig:
    """Check a parsed kubeconfig whole and return the selected context's connection.

    ``context`` picks a context by name; ``None`` takes ``current-context``. Every entry is
    checked, also those the chosen context does not use: a kubeconfig handed to the
    dispatcher must hold nothing it may not use.
    """
    allow = allow or InsecureAllowances()
    if not isinstance(data, Mapping):
        raise KubeconfigRejected("the kubeconfig must be a mapping", cluster=cluster)
    problems = _Problems()
    for key in data:
        if key not in _TOP_LEVEL:
            problems.refuse(f"{key}", "unknown kubeconfig field")
    if data.get("kind", "Config") != "Config":
        problems.add("kind", "must be Config")
    clusters = _named_entries(data, "clusters", "cluster", problems)
    users = _named_entries(data, "users", "user", problems)
    contexts = _named_entries(data, "contexts", "context", problems)
    for where, body in clusters.values():
        _check_cluster(where, body, allow, problems)
    for where, body in users.values():
        _check_user(where, body, problems)
    for where, body in contexts.values():
        for key in body:
            if key not in _CONTEXT_FIELDS:
                problems.refuse(f"{where}.{key}", "unknown context field")

    chosen = context if context is not None else data.get("current-context")
    vetted: VettedKubeconfig | None = None
    if not isinstance(chosen, str) or not chosen:
        problems.add("current-context", "is missing: set it or configure a context")
    elif chosen not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        source = "configured context" if context is not None else "current-context"
        problems.add(source, f"names context {chosen!r}, which does not exist (known: {known})")
    elif not problems.items:
        vetted = _select(
            chosen,
            contexts=contexts,
            clusters=clusters,
            users=users,
            cluster=cluster,
            problems=problems,
        )
    if vetted is not None:
        vetted = replace(vetted, allow_private_addresses=allow.allow_private_addresses)
    if vetted is not None and pin is not None:
        _check_pin(vetted, pin, problems)
    if problems.items or vetted is None:
        raise problems.rejection(cluster)
    return vetted


def vet_token_credentials(
    *,
    cluster: str,
    server: str,
    token: str,
    ca_pem: str | None,
    namespace: str | None = None,
    allow: InsecureAllowances | None = None,
    pin: ClusterPin | None = None,
) -> VettedKubeconfig:
    """Vet a server URL, bearer token and CA that did not come as a kubeconfig."""
    allow = allow or InsecureAllowances()
    problems = _Problems()
    _check_server("server", server, allow, problems)
    if not _TOKEN.fullmatch(token):
        problems.add("token", "must be a non-empty token without spaces or control characters")
    if ca_pem is not None and _PEM_CERTIFICATE not in ca_pem:
        problems.add("ca", "must hold PEM certificates (-----BEGIN CERTIFICATE-----)")
    if problems.items:
        raise problems.rejection(cluster)
    vetted = VettedKubeconfig(
        cluster=cluster,
        server=server,
        ca_pem=ca_pem,
        token=token,
        namespace=namespace,
        allow_private_addresses=allow.allow_private_addresses,
    )
    if pin is not None:
        _check_pin(vetted, pin, problems)
        if problems.items:
            raise problems.rejection(cluster)
    return vetted


def ca_fingerprints(ca_pem: str) -> tuple[str, ...]:
    """SHA-256 (hex) of the DER bytes of every certificate in a PEM bundle, in order."""
    found = []
    for block in _PEM_BLOCK.findall(ca_pem):
        try:
            der = ssl.PEM_cert_to_DER_cert(block)
        except ValueError:
            continue
        found.append(hashlib.sha256(der).hexdigest())
    return tuple(found)


def _normal_url(url: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    port = port if port is not None else {"https": 443, "http": 80}.get(scheme)
    return (scheme, (parts.hostname or "").rstrip(".").lower(), port, parts.path.rstrip("/"))


def _check_pin(vetted: VettedKubeconfig, pin: ClusterPin, problems: _Problems) -> None:
    """The chosen context must reach the pinned server, through the pinned CAs only."""
    if pin.server is not None and _normal_url(vetted.server) != _normal_url(pin.server):
        problems.add(
            "server",
            f"{vetted.server} is not the API server pinned for this cluster ({pin.server}); "
            "fix the credential in Vault, or pin.server if the cluster moved",
            RefusalReason.SERVER_MISMATCH,
        )
    if not pin.ca_sha256:
        return
    if vetted.insecure_skip_tls_verify or vetted.ca_pem is None:
        problems.add(
            "certificate-authority-data",
            "is missing, but the cluster pins its CA (pin.ca_sha256): the server's "
            "certificate could not be checked against it",
            RefusalReason.CA_MISMATCH,
        )
        return
    fingerprints = ca_fingerprints(vetted.ca_pem)
    unpinned = [f for f in fingerprints if f not in pin.ca_sha256]
    if unpinned or not fingerprints:
        shown = ", ".join(f"sha256:{f}" for f in unpinned) or "none readable"
        problems.add(
            "certificate-authority-data",
            f"holds a CA certificate not pinned for this cluster ({shown}); every "
            "certificate of the bundle must be listed in pin.ca_sha256",
            RefusalReason.CA_MISMATCH,
        )


# ----------------------------------------------------------------------------- checks


def _named_entries(
    data: Mapping[str, Any], section: str, body_key: str, problems: _Problems
) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """``name -> (field path of the body, body)`` of one list section."""
    entries: dict[str, tuple[str, Mapping[str, Any]]] = {}
    items = data.get(section)
    if items is None:
        return entries
    if not isinstance(items, list):
        problems.add(section, "must be a list")
        return entries
    for index, item in enumerate(items):
        where = f"{section}[{index}]"
        if not isinstance(item, Mapping):
            problems.add(where, "must be a mapping with name and " + body_key)
            continue
        for key in item:
            if key not in ("name", body_key, "extensions"):
                problems.refuse(f"{where}.{key}", f"unknown {body_key} entry field")
        name = item.get("name")
        body = item.get(body_key)
        if not isinstance(name, str) or not name:
            problems.add(f"{where}.name", "must be a non-empty string")
            continue
        if name in entries:
            problems.add(f"{where}.name", f"duplicates {entries[name][0]}.name ({name!r})")
            continue
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            problems.add(f"{where}.{body_key}", "must be a mapping")
            continue
        entries[name] = (f"{where}.{body_key}", body)
    return entries


def _check_cluster(
    where: str, body: Mapping[str, Any], allow: InsecureAllowances, problems: _Problems
) -> None:
    for key in body:
        if key in _REFUSED_CLUSTER_FIELDS:
            problems.refuse(f"{where}.{key}", *_REFUSED_CLUSTER_FIELDS[key])
        elif key not in _CLUSTER_FIELDS:
            problems.refuse(f"{where}.{key}", "unknown cluster field")
    server = body.get("server")
    if server is None:
        problems.add(f"{where}.server", "is missing")
    elif not isinstance(server, str):
        problems.add(f"{where}.server", "must be a string")
    else:
        _check_server(f"{where}.server", server, allow, problems)
    insecure = body.get("insecure-skip-tls-verify", False)
    if insecure not in (True, False):
        problems.add(f"{where}.insecure-skip-tls-verify", "must be true or false")
    elif insecure and not allow.allow_insecure_skip_tls_verify:
        problems.refuse(
            f"{where}.insecure-skip-tls-verify",
            "TLS verification cannot be skipped (set allow_insecure."
            "allow_insecure_skip_tls_verify: true for a test cluster)",
            RefusalReason.INSECURE_TRANSPORT,
        )
    elif insecure and "certificate-authority-data" in body:
        problems.add(
            f"{where}.insecure-skip-tls-verify",
            "cannot be combined with certificate-authority-data",
        )
    if "certificate-authority-data" in body:
        _decode_pem(f"{where}.certificate-authority-data", body, problems, kind="certificate")
    tls_server_name = body.get("tls-server-name")
    if tls_server_name is not None and not isinstance(tls_server_name, str):
        problems.add(f"{where}.tls-server-name", "must be a string")


def _check_server(where: str, server: str, allow: InsecureAllowances, problems: _Problems) -> None:
    try:
        parts = urlsplit(server)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        problems.add(where, "is not a valid URL")
        return
    if parts.scheme == "http":
        if not allow.allow_http:
            problems.refuse(
                where,
                "plain http:// would send the credential unencrypted; use https:// "
                "(or set allow_insecure.allow_http: true for a test cluster)",
                RefusalReason.INSECURE_TRANSPORT,
            )
    elif parts.scheme != "https":
        problems.add(where, "must be an https:// URL")
    if not hostname:
        problems.add(where, "has no host")
    elif not allow.allow_private_addresses and (why := private_address(hostname)):
        problems.refuse(
            where,
            f"{hostname} is {why}; the credential would be sent there (set allow_insecure."
            "allow_private_addresses: true for a test cluster that really listens there)",
            RefusalReason.PRIVATE_ADDRESS,
        )
    if parts.username is not None or parts.password is not None:
        problems.refuse(where, "a URL must not carry credentials")
    if parts.query or parts.fragment:
        problems.add(where, "must not have a query or fragment")


def _check_user(where: str, body: Mapping[str, Any], problems: _Problems) -> None:
    for key in body:
        if key in _REFUSED_USER_FIELDS:
            problems.refuse(f"{where}.{key}", *_REFUSED_USER_FIELDS[key])
        elif key not in _USER_FIELDS:
            problems.refuse(f"{where}.{key}", "unknown user field")
    token = body.get("token")
    if token is not None and not (isinstance(token, str) and _TOKEN.fullmatch(token)):
        problems.add(
            f"{where}.token", "must be a non-empty token without spaces or control characters"
        )
    has_cert = "client-certificate-data" in body
    has_key = "client-key-data" in body
    if has_cert != has_key:
        missing = "client-key-data" if has_cert else "client-certificate-data"
        problems.add(f"{where}.{missing}", "is missing (a certificate needs its key)")
    if has_cert:
        _decode_pem(f"{where}.client-certificate-data", body, problems, kind="certificate")
    if has_key:
        _decode_pem(f"{where}.client-key-data", body, problems, kind="key")


def _decode_pem(
    where: str, body: Mapping[str, Any], problems: _Problems, *, kind: str
) -> str | None:
    key = where.rsplit(".", 1)[-1]
    value = body.get(key)
    if not isinstance(value, str):
        problems.add(where, "must be a base64 string")
        return None
    try:
        pem = base64.b64decode("".join(value.split()), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        problems.add(where, "is not valid base64 of a PEM document")
        return None
    if kind == "certificate" and _PEM_CERTIFICATE not in pem:
        problems.add(where, "must hold PEM certificates (-----BEGIN CERTIFICATE-----)")
        return None
    if kind == "key" and not _PEM_PRIVATE_KEY.search(pem):
        problems.add(where, "must hold a PEM private key")
        return None
    return pem


def _select(
    chosen: str,
    *,
    contexts: Mapping[str, tuple[str, Mapping[str, Any]]],
    clusters: Mapping[str, tuple[str, Mapping[str, Any]]],
    users: Mapping[str, tuple[str, Mapping[str, Any]]],
    cluster: str,
    problems: _Problems,
) -> VettedKubeconfig | None:
    where, body = contexts[chosen]
    cluster_name = str(body.get("cluster"))
    user_name = str(body.get("user"))
    if cluster_name not in clusters:
        problems.add(f"{where}.cluster", f"names cluster {cluster_name!r}, which does not exist")
    if user_name not in users:
        problems.add(f"{where}.user", f"names user {user_name!r}, which does not exist")
    namespace = body.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        problems.add(f"{where}.namespace", "must be a string")
    if problems.items:
        return None
    cluster_where, cluster_body = clusters[cluster_name]
    user_where, user_body = users[user_name]
    ca_pem = None
    if "certificate-authority-data" in cluster_body:
        ca_pem = _decode_pem(
            f"{cluster_where}.certificate-authority-data",
            cluster_body,
            problems,
            kind="certificate",
        )
    cert_pem = key_pem = None
    if "client-certificate-data" in user_body:
        cert_pem = _decode_pem(
            f"{user_where}.client-certificate-data", user_body, problems, kind="certificate"
        )
        key_pem = _decode_pem(f"{user_where}.client-key-data", user_body, problems, kind="key")
    token = user_body.get("token")
    if token is None and cert_pem is None:
        problems.add(
            user_where, "has no credential: set token or client-certificate-data/client-key-data"
        )
    if problems.items:
        return None
    return VettedKubeconfig(
        cluster=cluster,
        server=cluster_body["server"],
        ca_pem=ca_pem,
        token=token,
        client_cert_pem=cert_pem,
        client_key_pem=key_pem,
        namespace=namespace or None,
        tls_server_name=cluster_body.get("tls-server-name"),
        insecure_skip_tls_verify=bool(cluster_body.get("insecure-skip-tls-verify", False)),
    )
