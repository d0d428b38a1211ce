"""The dispatcher's own exceptions, one small tree; no I/O.

Library exceptions (pydantic, kubernetes, hvac, httpx) are translated into these once, at
the edge that calls the library, with the original chained as ``__cause__``. Every error
names what is at fault (a field path, a cluster, a job) and never carries a secret: no
token, kubeconfig, Vault response body or certificate key may end up in a message.

    DispatcherError
    ├── InputError              bad input refused whole; ``problems`` lists every fault
    │   ├── ConfigError         settings file or environment (fails the start)
    │   ├── SpecError           a task spec (the API answers 422)
    │   └── SnapshotError       a snapshot document (CLI ``route``)
    ├── RoutingError            no cluster can ever run the task
    ├── CredentialError         getting credentials for ``cluster`` failed
    │   ├── VaultError          Vault refused or failed (``status``; never the body)
    │   └── KubeconfigRejected  a kubeconfig breaks a safety rule (``reason``; ``refusal``:
    │                           a ``RefusalReason``, bounded, for metrics and the API)
    ├── ClusterError            talking to ``cluster`` failed; ``kind`` says what to do
    │   ├── ClusterUnavailable  no answer; ``cause``: transport, breaker, credentials or
    │                           refused (``refusal`` then says why)
    │   └── ApiError            the API server answered an error (``status``, ``reason``,
    │                           ``kind`` from ``classify_status``, ``retry_after``)
    ├── AccessError             an API caller refused
    │   ├── Unauthenticated     no valid credential (401)
    │   └── Forbidden           authenticated, not allowed; ``problems`` says what (403)
    ├── StoreError              the job record store refused or failed a write
    │   ├── StaleRecord         the record changed since it was read (re-read, re-decide)
    │   └── Fenced              the writer is not the current leader (a newer term exists)
    └── JobError                about one ``job_id``
        ├── NotFound            no such job
        └── Conflict            the job exists in another state / with another spec

A ``ClusterError``'s ``kind`` (``ErrorKind``) tells a caller what to do about it, the same
way everywhere (the dispatcher and the simulation): give up on ``PERMANENT``, re-read on
``CONFLICT``, list again on ``GONE``, wait ``retry_after`` on ``THROTTLED``, back off and
retry on ``TRANSIENT``. ``ClusterUnavailable`` is always ``TRANSIENT``; its ``cause`` says
whether the API server could not be reached (``TRANSPORT``), the circuit breaker refused to
try (``BREAKER``), no credentials could be had (``CREDENTIALS``: Vault unavailable), in
which case the cluster itself may be fine, or what Vault holds for the cluster was refused by
our own rules (``REFUSED``: an exec plugin, a server other than the pinned one, a loopback
address...), which no retry of the request can mend: someone must fix Vault or the settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AccessError",
    "ApiError",
    "ClusterError",
    "ClusterUnavailable",
    "ConfigError",
    "Conflict",
    "CredentialError",
    "DispatcherError",
    "ErrorKind",
    "Fenced",
    "Forbidden",
    "InputError",
    "JobError",
    "KubeconfigRejected",
    "NotFound",
    "Problem",
    "RefusalReason",
    "RoutingError",
    "SnapshotError",
    "SpecError",
    "StaleRecord",
    "StoreError",
    "Unauthenticated",
    "UnavailableCause",
    "VaultError",
    "classify_status",
    "field_path",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input: where (a field path) and what."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    @classmethod
    def from_validation_error(
        cls, exc: ValidationError, *, prefix: str = ""
    ) -> tuple[Problem, ...]:
        """Every error of a pydantic ``ValidationError``, each at its own field path.

        Input values are deliberately left out of the messages: they may be secrets.
        """
        problems: list[Problem] = []
        for error in exc.errors(include_url=False, include_input=False):
            nested = (error.get("ctx") or {}).get("error")
            base = _join(prefix, field_path(error["loc"]))
            if isinstance(nested, InputError):
                # A model validator that found several cross-field problems at once.
                problems.extend(Problem(_join(base, p.field), p.message) for p in nested.problems)
                continue
            problems.append(cls(base, _readable(error["msg"], error["type"])))
        return tuple(problems)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(loc: Iterable[str | int]) -> str:
    """Render a pydantic location as ``clusters[1].credentials.vault_kv.path``.

    Map keys that are not identifiers (label keys, resource names) are bracketed:
    ``container_resources.limits[nvidia.com/gpu]``.
    """
    out = ""
    for part in loc:
        if part == "[key]":
            # pydantic's marker for "the key of the map entry before"; the message says so.
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part}]"
    return out


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def _readable(message: str, error_type: str) -> str:
    # pydantic prefixes messages of ValueErrors raised in validators; the prefix says
    # nothing to a DAG author.
    for noise in ("Value error, ", "Assertion failed, "):
        if message.startswith(noise):
            message = message[len(noise) :]
    if error_type == "missing":
        return "field required"
    if error_type == "extra_forbidden":
        return "unknown field (check the spelling)"
    return message[:1].lower() + message[1:] if message[1:2].islower() else message


class DispatcherError(Exception):
    """Base of every error the dispatcher raises on purpose."""


class InputError(DispatcherError, ValueError):
    """Input refused whole; ``problems`` lists every fault found, each at its field."""

    what = "input"

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"invalid {self.what}{where} ({count} {noun}):"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)

    @classmethod
    def single(cls, field: str, message: str, *, source: str | None = None) -> InputError:
        return cls([Problem(field, message)], source=source)


class ConfigError(InputError):
    """The settings (YAML file and ``DISPATCHER_*`` environment) are invalid."""

    what = "configuration"


class SpecError(InputError):
    """A task spec is invalid; the API turns this into a 422 listing ``problems``."""

    what = "task spec"


class SnapshotError(InputError):
    """A snapshot document (nodes and pods per cluster, as read by the CLI) is invalid."""

    what = "snapshot"


class RoutingError(DispatcherError):
    """No cluster can ever run the task; ``reasons`` maps each cluster to why not."""

    def __init__(self, message: str, reasons: Iterable[tuple[str, str]] = ()) -> None:
        self.reasons = tuple(reasons)
        super().__init__(message)


class CredentialError(DispatcherError):
    """Credentials for ``cluster`` could not be obtained or were refused."""

    def __init__(self, message: str, *, cluster: str | None = None) -> None:
        self.cluster = cluster
        super().__init__(f"{cluster}: {message}" if cluster else message)


class VaultError(CredentialError):
    """Vault refused or failed; ``status`` is the HTTP status when there was one."""

    def __init__(
        self, message: str, *, cluster: str | None = None, status: int | None = None
    ) -> None:
        self.status = status
        super().__init__(message, cluster=cluster)


class RefusalReason(StrEnum):
    """Why a cluster's credentials were refused by our rules; a bounded metric label.

    When one kubeconfig breaks several rules, the first of this order that applies names
    the refusal (``KubeconfigRejected.refusal``); its message lists every problem.
    """

    #: The API server is not the one the cluster's ``pin.server`` names.
    SERVER_MISMATCH = "server-mismatch"
    #: The CA bundle holds a certificate not in the cluster's ``pin.ca_sha256``.
    CA_MISMATCH = "ca-mismatch"
    #: Loopback, link-local, unspecified or cloud metadata address (at vetting or connect).
    PRIVATE_ADDRESS = "private-address"
    #: ``exec`` or ``auth-provider``: the client would run a program.
    EXEC_PLUGIN = "exec-plugin"
    #: A field names a local file (tokenFile, certificate-authority, client-key...).
    LOCAL_FILE = "local-file"
    #: ``http://`` or ``insecure-skip-tls-verify`` without the cluster's allowance.
    INSECURE_TRANSPORT = "insecure-transport"
    #: Basic auth, impersonation, proxies, fields we do not know.
    UNSUPPORTED = "unsupported"
    #: Not a usable kubeconfig (YAML, structure, missing credential or context).
    INVALID = "invalid"


class KubeconfigRejected(CredentialError):
    """A kubeconfig breaks a safety rule (exec plugin, file path, insecure TLS, a server
    or CA other than the pinned one...); ``refusal`` is the bounded reason code."""

    def __init__(
        self,
        reason: str,
        *,
        cluster: str | None = None,
        refusal: RefusalReason = RefusalReason.INVALID,
    ) -> None:
        self.reason = reason
        self.refusal = refusal
        super().__init__(f"kubeconfig rejected: {reason}", cluster=cluster)


class ErrorKind(StrEnum):
    """What a failed Kubernetes request means for the caller; see ``classify_status``."""

    #: The request itself is wrong (400, 403, 404, 422, other 4xx): retrying cannot help;
    #: report the API server's message.
    PERMANENT = "permanent"
    #: 409: the object exists already or changed since it was read: re-read, decide again.
    CONFLICT = "conflict"
    #: 401 even after one re-authentication: the credential is refused.
    UNAUTHORIZED = "unauthorized"
    #: 429: the API server sheds load; retry after ``retry_after``. Not a sign of an outage.
    THROTTLED = "throttled"
    #: 5xx, timeouts, connection errors: retry with backoff.
    TRANSIENT = "transient"
    #: 410: a resourceVersion or continue token is too old: list again.
    GONE = "gone"


def classify_status(status: int) -> ErrorKind:
    """The kind of an HTTP error status from a Kubernetes API server; pure.

    The one rule, shared by the cluster connection, the informers and the simulation.
    Any status that is not an error (below 400) or not HTTP at all (0) counts as transient:
    the answer could not be understood, which says nothing about the request.
    """
    if status == 401:
        return ErrorKind.UNAUTHORIZED
    if status == 409:
        return ErrorKind.CONFLICT
    if status == 410:
        return ErrorKind.GONE
    if status == 429:
        return ErrorKind.THROTTLED
    if 400 <= status < 500:
        return ErrorKind.PERMANENT
    return ErrorKind.TRANSIENT


class UnavailableCause(StrEnum):
    """Why a cluster gave no answer."""

    #: Connection refused, timed out, TLS failed, the stream broke: the API server or the
    #: network is in trouble.
    TRANSPORT = "transport"
    #: Not sent: the cluster's circuit breaker is open after repeated failures.
    BREAKER = "breaker"
    #: Not sent: no usable credentials (Vault unreachable or refusing, a client of ours
    #: closed). Says nothing about the cluster itself.
    CREDENTIALS = "credentials"
    #: Not sent, or cut off before anything was sent: the credentials or the address were
    #: refused by our own rules (``ClusterUnavailable.refusal`` says which). Says nothing
    #: about the cluster; retrying cannot help until Vault or the settings change.
    REFUSED = "refused"


class ClusterError(DispatcherError):
    """Talking to ``cluster`` failed; ``kind`` says what a caller should do about it.

    ``detail`` is the message without the cluster's name in front.
    """

    kind: ErrorKind = ErrorKind.TRANSIENT

    def __init__(self, message: str, *, cluster: str) -> None:
        self.cluster = cluster
        self.detail = message
        super().__init__(f"{cluster}: {message}")


class ClusterUnavailable(ClusterError):
    """No answer from the cluster: unreachable, timing out, refused by the breaker, or no
    credentials to ask with (``cause``). Always ``TRANSIENT``."""

    def __init__(
        self,
        message: str,
        *,
        cluster: str,
        cause: UnavailableCause = UnavailableCause.TRANSPORT,
        refusal: RefusalReason | None = None,
    ) -> None:
        self.cause = cause
        #: Set with cause ``REFUSED``.
        self.refusal = refusal
        super().__init__(message, cluster=cluster)


class ApiError(ClusterError):
    """The cluster's API server answered with an error status.

    ``kind`` defaults to ``classify_status(status)``; ``retry_after`` is the wait in seconds
    the server asked for (``Retry-After``), if any. The message carries the API server's
    own words, minus anything that may echo request values (``dispatcher.core.apierrors``).
    """

    def __init__(
        self,
        message: str,
        *,
        cluster: str,
        status: int,
        reason: str | None = None,
        kind: ErrorKind | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.kind = kind if kind is not None else classify_status(status)
        self.retry_after = retry_after
        super().__init__(message, cluster=cluster)


class AccessError(DispatcherError):
    """An API caller is refused; the message says why, never with the credential."""


class Unauthenticated(AccessError):
    """No credential, or one that is not (or no longer) valid."""


class Forbidden(AccessError):
    """Authenticated, but not allowed: each problem names what was refused and the setting
    that would allow it."""

    def __init__(self, problems: Sequence[Problem], *, tenant: str | None = None) -> None:
        self.problems = tuple(problems)
        self.tenant = tenant
        who = f"tenant {tenant!r}" if tenant else "the caller"
        super().__init__(f"{who} is not allowed: " + "; ".join(str(p) for p in self.problems))


class StoreError(DispatcherError):
    """The job record store refused or failed a write (``job_id`` when about one record)."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message)


class StaleRecord(StoreError):
    """The record's version is not the one the writer read: re-read it and decide again.

    Never retried blindly: the other writer may have finished or cancelled the job.
    """


class Fenced(StoreError):
    """The writer does not hold the current leader term: it must stop writing at once."""


class JobError(DispatcherError):
    """Something about one job."""

    def __init__(self, message: str, *, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(message)


class NotFound(JobError):
    """No job with this id (or idempotency key)."""


class Conflict(JobError):
    """The job exists already in a state or with a spec that contradicts the request."""
