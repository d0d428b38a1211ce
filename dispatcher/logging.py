"""Structured logging for the whole dispatcher: one structlog pipeline, with secrets redacted.

``configure_logging()`` sets up structlog *and* the standard library's root logger (so
kubernetes, urllib3, hvac and uvicorn records pass through the same processors): ISO UTC
timestamps, the log level, context variables (``bind_contextvars(job_id=...)``), exceptions
rendered into the event, then ``redact_secrets`` and a JSON (or console) renderer.

Redaction is the last processor before rendering, so nothing reaches the output without
passing it. It works at two levels:

* keys: a value whose key names a secret (``token``, ``vault_token``, ``secret_id``,
  ``password``, ``jwt``, ``kubeconfig``, ``client_key``, ``authorization``...) is replaced
  by ``[redacted]``, in nested mappings too. Keys that only describe a secret
  (``token_ttl``, ``token_expiry``, ``kubeconfig_path``) are kept;
* values: any string, including rendered exceptions and ``repr()`` of other objects, has
  JWTs, PEM private keys, base64-encoded PEM blocks, ``Bearer``/``Basic`` credentials, Vault
  tokens (``hvs.``...) and ``token: ...``-style assignments cut out (``redact_text``).

``redact_text`` (from ``core.redaction``) is also what error messages built from library
exceptions and failure messages built from log tails go through.

I/O: ``configure_logging`` installs a handler writing to a stream (stderr by default).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from dispatcher.core.redaction import REDACTED, redact_text

__all__ = [
    "REDACTED",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "redact_secrets",
    "redact_text",
]


_SECRET_WORDS = (
    "token",
    "secret",
    "secret_id",
    "password",
    "passwd",
    "jwt",
    "kubeconfig",
    "authorization",
    "cookie",
    "api_key",
    "private_key",
    "client_key",
    "key_data",
    "key_pem",
)
_SECRET_KEY = re.compile(r"(?:^|_)(?:" + "|".join(_SECRET_WORDS) + r")(?:$|_)")
# Keys that describe a secret without holding it.
_DESCRIPTIVE_SUFFIXES = (
    "_ttl",
    "_expiry",
    "_expires_at",
    "_expires_in",
    "_path",
    "_file",
    "_dir",
    "_mount",
    "_field",
    "_generation",
    "_source",
    "_type",
    "_version",
    "_role",
    "_renewable",
)


def is_secret_key(key: str) -> bool:
    """Whether a value under ``key`` (an event or mapping key) must not be logged."""
    normalized = key.lower().replace("-", "_").replace(".", "_")
    if normalized.endswith(_DESCRIPTIVE_SUFFIXES):
        return False
    return _SECRET_KEY.search(normalized) is not None


def _redact_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if is_secret_key(str(k)) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    # Anything else is rendered here, so its repr is redacted too (a renderer's fallback
    # would repr it after this processor).
    return redact_text(repr(value))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop secret values by key and by shape (see the module doc)."""
    for key in list(event_dict):
        if key.startswith("_"):
            # structlog's bookkeeping (_record, _from_structlog) is never rendered.
            continue
        value = event_dict[key]
        event_dict[key] = REDACTED if is_secret_key(key) else _redact_value(value)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


class _DispatcherHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler this module installed, so reconfiguring replaces it."""


def configure_logging(
    json: bool = True, level: str | int = "info", *, stream: TextIO | None = None
) -> None:
    """Route structlog and standard-library logging through one redacting pipeline.

    ``json=False`` renders for humans (development). ``stream`` defaults to stderr; tests
    pass a ``StringIO`` to read what would have been written. Calling it again replaces
    the previous configuration.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = _DispatcherHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _DispatcherHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Not cached: reconfiguring (tests, the CLI's --log-level) must reach loggers that
        # modules created at import time.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger named after its module (``dispatcher.credentials.vault``)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
