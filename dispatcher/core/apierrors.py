"""How a Kubernetes API server's error answer becomes an ``ApiError``, and what a failed
request says about the cluster's health; pure (no I/O, no clock).

The cluster connection and the simulation's in-memory clusters both build their errors
here, so a failure means the same thing in both:

1. ``classify_status`` (in ``dispatcher.errors``, beside ``ErrorKind``) gives the kind;
2. ``retry_after_seconds`` reads the wait a server asked for (``Retry-After``, or the
   ``Status`` details' ``retryAfterSeconds``);
3. ``status_message`` renders the ``Status`` body in the API server's own words, minus
   every request value it may echo: for 400 and 422 only the field causes are kept, each
   as ``field: what is wrong`` with the offending value cut out
   (``spec.containers[0].image: Required value``,
   ``metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of ...``),
   since an env value or an argument may be a secret;
4. ``authorizer_denied`` tells a 403 of the authorizer (RBAC: who may do what, which a
   restarted API server may answer until its caches have synced, kubernetes#121635) from
   one of admission (PodSecurity, a quota, a webhook: about the object itself);
5. ``health_signal`` says what a failure tells about the API server: only transport
   failures and 5xx count against it; a 429 is an answer (the server is alive and shedding
   load); a credential problem (none to be had, or refused) is ours, not the cluster's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from dispatcher.errors import (
    ApiError,
    ClusterError,
    ClusterUnavailable,
    ErrorKind,
    UnavailableCause,
    classify_status,
)

__all__ = [
    "HealthSignal",
    "api_error",
    "authorizer_denied",
    "classify_status",
    "health_signal",
    "retry_after_seconds",
    "status_message",
]

#: Longest message kept from one answer, and from one field cause.
MESSAGE_LIMIT = 800
CAUSE_LIMIT = 240
#: Statuses whose message may quote request values (env, args): only causes are shown.
_ECHOING_STATUSES = frozenset({400, 422})

# The forms of ``field.Error.ErrorBody()`` in k8s.io/apimachinery: "<type>", or
# "<type>: <value>", or "<type>: <value>: <detail>", or (types without a value)
# "<type>: <detail>". Strings are Go-quoted (%q); numbers and booleans are bare.
_WITHOUT_VALUE = ("Required value", "Forbidden", "Too long", "Internal error")
_WITH_VALUE = ("Invalid value", "Unsupported value", "Duplicate value", "Not found", "Too many")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_SCALAR = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")


class HealthSignal(StrEnum):
    """What one request's outcome says about the cluster's API server."""

    #: It answered (any status but 5xx and 429): alive.
    ANSWERED = "answered"
    #: It answered 429: alive, shedding load.
    THROTTLED = "throttled"
    #: No answer or a 5xx: the API server (or the way to it) is in trouble.
    FAILED = "failed"
    #: Our credentials are unavailable or refused: nothing is known about the server.
    CREDENTIALS = "credentials"
    #: Our own rules refused the credentials or the address: nothing is known about it.
    REFUSED = "refused"
    #: Nothing was sent (the breaker refused): nothing learned.
    NOT_SENT = "not-sent"


def health_signal(error: ClusterError) -> HealthSignal:
    """What ``error`` says about the API server of its cluster."""
    if isinstance(error, ClusterUnavailable):
        if error.cause is UnavailableCause.CREDENTIALS:
            return HealthSignal.CREDENTIALS
        if error.cause is UnavailableCause.REFUSED:
            return HealthSignal.REFUSED
        if error.cause is UnavailableCause.BREAKER:
            return HealthSignal.NOT_SENT
        return HealthSignal.FAILED
    if error.kind is ErrorKind.THROTTLED:
        return HealthSignal.THROTTLED
    if error.kind is ErrorKind.UNAUTHORIZED:
        return HealthSignal.CREDENTIALS
    if error.kind is ErrorKind.TRANSIENT:
        return HealthSignal.FAILED
    return HealthSignal.ANSWERED


def retry_after_seconds(header: str | None, body: Mapping[str, Any] | None = None) -> float | None:
    """Seconds a server asked to wait: the ``Retry-After`` header (delta-seconds), else the
    ``Status`` details' ``retryAfterSeconds``; ``None`` when neither is usable.

    An HTTP-date ``Retry-After`` is ignored (API servers send seconds; a date would need a
    clock).
    """
    if header is not None:
        try:
            seconds = float(header.strip())
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    details = (body or {}).get("details")
    value = details.get("retryAfterSeconds") if isinstance(details, Mapping) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _without_value(message: str) -> str:
    """A field cause's message with the offending value cut out (see the module doc)."""
    for kind in _WITHOUT_VALUE:
        if message == kind or message.startswith(kind + ": "):
            return message
    for kind in _WITH_VALUE:
        if message == kind:
            return message
        if not message.startswith(kind + ": "):
            continue
        rest = message[len(kind) + 2 :]
        value = _QUOTED.match(rest) if rest.startswith('"') else _SCALAR.match(rest)
        if value is None:
            return kind  # a value we cannot delimit (a struct): keep none of it
        rest = rest[value.end() :]
        if rest.startswith(": ") and rest[2:]:
            return f"{kind}: {rest[2:]}"
        return kind
    # Not a form we know (an admission webhook's own words): they may quote anything.
    return ""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _causes(body: Mapping[str, Any]) -> list[str]:
    details = body.get("details")
    causes = details.get("causes") if isinstance(details, Mapping) else None
    rendered: list[str] = []
    for cause in causes if isinstance(causes, list) else ():
        if not isinstance(cause, Mapping):
            continue
        field = cause.get("field")
        message = cause.get("message")
        what = _without_value(message) if isinstance(message, str) else ""
        if not what and isinstance(cause.get("reason"), str):
            what = str(cause["reason"])  # e.g. FieldValueInvalid: the type, not the words
        text = f"{field}: {what}" if field and what else str(field or what)
        if text and text not in rendered:
            rendered.append(_clip(text, CAUSE_LIMIT))
    return rendered


def status_message(status: int, body: Mapping[str, Any]) -> str:
    """The API server's explanation in a ``Status`` body, safe to log and show a DAG author.

    For 400 and 422 (whose messages quote the request) only the causes, each with its
    field path and without the value; otherwise the server's ``message``.
    """
    if status in _ECHOING_STATUSES:
        text = "; ".join(_causes(body))
    else:
        message = body.get("message")
        text = message if isinstance(message, str) else ""
    return _clip(text, MESSAGE_LIMIT)


#: The authorizer's words (``staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
#: responsewriters``' ``forbiddenMessage``): ``User "u" cannot create resource "pods" ...``.
_AUTHORIZER_DENIAL = re.compile(r'User "[^"]*" cannot [a-z]+ resource "')


def authorizer_denied(error: ApiError) -> bool:
    """Whether a 403 came from the authorizer (who is asking), not from admission (what)."""
    return error.status == 403 and _AUTHORIZER_DENIAL.search(str(error)) is not None


def api_error(
    cluster: str,
    what: str,
    status: int,
    body: Mapping[str, Any],
    *,
    retry_after_header: str | None = None,
) -> ApiError:
    """The ``ApiError`` for an error answer to ``what`` (``create pod ns/name``...)."""
    reason = body.get("reason") if isinstance(body.get("reason"), str) else None
    kind = classify_status(status)
    retry_after = retry_after_seconds(retry_after_header, body)
    text = f"{what}: HTTP {status}" + (f" {reason}" if reason else "")
    detail = status_message(status, body)
    if detail:
        text += f": {detail}"
    if kind is ErrorKind.THROTTLED and retry_after is not None:
        text += f" (retry after {retry_after:g}s)"
    return ApiError(
        text, cluster=cluster, status=status, reason=reason, kind=kind, retry_after=retry_after
    )
