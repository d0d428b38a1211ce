"""The ``dispatcher`` connection, read into settings for ``DispatcherClient``.

Where the dispatcher is and how to talk to it: the URL (``host``, with ``schema`` and
``port`` when the host is bare), the token (``password``, or a ``token_file`` in extra,
such as a projected ServiceAccount token), TLS verification, timeouts and retries.

A token file is read again whenever it changes (``RotatingToken``): projected
ServiceAccount tokens are rotated while a long task runs, so every request carries the
current one (``BearerAuth``, from ``dispatcher.client``).

I/O: reads the token file, nothing else; no Airflow imports (the hook hands the
connection's fields in), so this is tested without Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dispatcher.airflow.provider import CONN_TYPE
from dispatcher.client import BearerAuth, RotatingToken, TokenSource

__all__ = [
    "BearerAuth",
    "ConnectionSettings",
    "RotatingToken",
    "TokenSource",
    "settings_from_connection",
]

#: The dispatcher's wait endpoint holds a request for at most this long.
MAX_WAIT_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    base_url: str
    token: TokenSource = field(default_factory=TokenSource)
    verify: bool | str = True
    timeout: float = 30.0
    wait_timeout: float = 60.0
    retries: int = 5
    #: Where people reach the dispatcher's console (the task's extra link); default
    #: ``base_url``, which workers use and a browser may not reach.
    console_url: str | None = None
    #: The kube-dispatcher Grafana dashboard's URL (the task's other extra link).
    grafana_url: str | None = None


def settings_from_connection(
    *,
    conn_id: str,
    host: str | None,
    schema: str | None = None,
    port: int | None = None,
    password: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ConnectionSettings:
    """Settings from a connection's fields; ``ValueError`` says what is missing or wrong."""
    extras = _Extras(conn_id, extra or {})
    return ConnectionSettings(
        base_url=_base_url(conn_id, host, schema, port),
        token=TokenSource(token=password or None, path=extras.text("token_file")),
        verify=extras.text("ca_file") or extras.flag("verify", default=True),
        timeout=extras.number("timeout", default=30.0, low=1.0, high=3600.0),
        wait_timeout=extras.number("wait_timeout", default=60.0, low=1.0, high=MAX_WAIT_SECONDS),
        retries=int(extras.number("retries", default=5, low=0, high=100)),
        console_url=extras.url("console_url"),
        grafana_url=extras.url("grafana_url"),
    )


def _base_url(conn_id: str, host: str | None, schema: str | None, port: int | None) -> str:
    if not host:
        raise ValueError(
            f"connection {conn_id!r} has no host: set it to the dispatcher's URL, "
            "e.g. https://kube-dispatcher.platform.svc:8080"
        )
    host = host.strip().rstrip("/")
    if "://" not in host:
        scheme = schema if schema in ("http", "https") else "https"
        host = f"{scheme}://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"connection {conn_id!r}: host must be an http(s) URL of the dispatcher, "
            "e.g. https://kube-dispatcher.platform.svc:8080"
        )
    if port and parts.port is None:
        host = f"{parts.scheme}://{parts.netloc}:{port}{parts.path}"
    return host


class _Extras:
    """Typed reads of ``extra``; the form's prefixed names are accepted too."""

    def __init__(self, conn_id: str, extra: Mapping[str, Any]) -> None:
        self._conn_id = conn_id
        self._extra = extra

    def _get(self, name: str) -> Any:
        value = self._extra.get(name)
        if value is None or value == "":
            value = self._extra.get(f"extra__{CONN_TYPE}__{name}")
        return None if value == "" else value

    def _bad(self, name: str, what: str) -> ValueError:
        return ValueError(f"connection {self._conn_id!r}: extra {name!r} must be {what}")

    def text(self, name: str) -> str | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def url(self, name: str) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._bad(
                name, "an http(s) URL, e.g. https://grafana.example.com/d/kube-dispatcher"
            )
        return value.strip()

    def flag(self, name: str, *, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise self._bad(name, "true or false")

    def number(self, name: str, *, default: float, low: float, high: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self._bad(name, "a number") from None
        if not low <= number <= high:
            raise self._bad(name, f"between {low:g} and {high:g}")
        return number
