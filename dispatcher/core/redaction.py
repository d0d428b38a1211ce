"""Credential-looking text cut out of free text: the redaction the logger applies to every
string it writes (``dispatcher.logging``), and pod failure messages built from a task's
log tail (``outcome``) go through. Pure, no I/O.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact_text"]

REDACTED = "[redacted]"

_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, also cut off or with escaped newlines (inside a repr).
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        REDACTED,
    ),
    # Base64 of "-----BEGIN" (kubeconfig *-data fields): keys and certificates alike.
    (re.compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/=]*"), REDACTED),
    # JWTs: base64url header starting with '{"' and at least a payload.
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?"), REDACTED),
    # HTTP credentials.
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+"), rf"\1\2{REDACTED}"),
    # Vault tokens: current (hvs./hvb./hvr.) and legacy (s./b./r. + 24 characters).
    (re.compile(r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}"), REDACTED),
    (re.compile(r"\b[sbr]\.[A-Za-z0-9]{24}\b"), REDACTED),
    # Assignments and headers: `token: x`, "secret_id": "x", X-Vault-Token=x, password=x.
    (
        re.compile(
            r"(?i)\b((?:[a-z0-9]+[_-])*(?:token|secret|secret[_-]id|password|passwd|jwt"
            r"|authorization|client[_-]key[_-]data|api[_-]key))"
            r"(['\"]?\s*[:=]\s*['\"]?)(?!\[redacted\]|(?:bearer|basic)\s)[^\s'\",;}\]]+"
        ),
        rf"\1\2{REDACTED}",
    ),
)


def redact_text(text: str) -> str:
    """``text`` with every credential-looking substring replaced by ``[redacted]``."""
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
