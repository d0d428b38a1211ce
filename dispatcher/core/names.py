"""Kubernetes naming rules (RFC 1123 names, label keys and values); pure, no I/O.

The same rules the API server applies, so that a spec we accept is never refused later by a
cluster. Each ``check_*`` returns the value or raises ``ValueError`` saying which rule broke;
the ``Annotated`` aliases plug them into pydantic models.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = [
    "DNSLabel",
    "DNSSubdomain",
    "LabelKey",
    "LabelValue",
    "check_dns_label",
    "check_dns_subdomain",
    "check_label_key",
    "check_label_value",
    "sanitize_dns_label",
]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL_MAX = 63
_DNS_SUBDOMAIN_MAX = 253
_LABEL_NAME_MAX = 63
_LABEL_VALUE_MAX = 63


def check_dns_label(value: str) -> str:
    """An RFC 1123 label: lowercase alphanumerics and '-', at most 63, e.g. ``gpu-a100``."""
    if len(value) > _DNS_LABEL_MAX:
        raise ValueError(f"must be at most {_DNS_LABEL_MAX} characters (got {len(value)})")
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid RFC 1123 name: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_dns_subdomain(value: str) -> str:
    """An RFC 1123 subdomain: dot-separated labels, at most 253, e.g. ``example.com``."""
    if len(value) > _DNS_SUBDOMAIN_MAX:
        raise ValueError(f"must be at most {_DNS_SUBDOMAIN_MAX} characters (got {len(value)})")
    if not value or not all(_DNS_LABEL.fullmatch(part) for part in value.split(".")):
        raise ValueError(
            f"{value!r} is not a valid RFC 1123 subdomain: use lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit"
        )
    return value


def check_label_key(value: str) -> str:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS subdomain, name <= 63."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            raise ValueError(f"{value!r}: the prefix before '/' must not be empty")
        try:
            check_dns_subdomain(prefix)
        except ValueError as exc:
            raise ValueError(f"{value!r}: prefix {exc}") from None
    if not name:
        raise ValueError(f"{value!r}: the name part must not be empty")
    if len(name) > _LABEL_NAME_MAX:
        raise ValueError(f"{value!r}: the name part must be at most {_LABEL_NAME_MAX} characters")
    if not _NAME_PART.fullmatch(name):
        raise ValueError(
            f"{value!r} is not a valid key: the name part may hold letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit"
        )
    return value


def check_label_value(value: str) -> str:
    """A label value: empty, or at most 63 of letters, digits, '-', '_', '.'."""
    if len(value) > _LABEL_VALUE_MAX:
        raise ValueError(
            f"label values must be at most {_LABEL_VALUE_MAX} characters (got {len(value)})"
        )
    if value and not _NAME_PART.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid label value: use letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return value


def sanitize_dns_label(value: str, *, max_length: int = _DNS_LABEL_MAX) -> str:
    """Turn any text into a valid RFC 1123 label (lowercase, invalid runs become '-').

    Returns an empty string when nothing usable is left; callers supply a fallback.
    """
    lowered = re.sub(r"[^a-z0-9-]+", "-", value.lower())
    return lowered[:max_length].strip("-")


DNSLabel = Annotated[str, AfterValidator(check_dns_label)]
DNSSubdomain = Annotated[str, AfterValidator(check_dns_subdomain)]
LabelKey = Annotated[str, AfterValidator(check_label_key)]
LabelValue = Annotated[str, AfterValidator(check_label_value)]
