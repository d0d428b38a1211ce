"""Count the requests an apiserver of the test stack received, from its own audit log.

A stack started with ``Stack(audit=True)`` (or ``python -m tests.stack up --audit``) has
every apiserver write one JSON line per audit event to ``Stack.audit_log(cluster)``
(policy ``audit-policy.yaml``: level Metadata, stage RequestReceived omitted). A short
request leaves one event (ResponseComplete); a long-running one (a watch, a log follow)
leaves ResponseStarted when it opens and ResponseComplete when it ends. Each request is
counted once, by its ``auditID``, at the first event seen: so a watch counts when it
opens, unlike ``apiserver_request_total``, which counts it when it ends.

I/O: reads the log files (from a byte offset, so a run reads only its own part).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request as the apiserver recorded it."""

    audit_id: str
    user: str
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection, ...
    resource: str  # "" for a non-resource URL such as /healthz
    subresource: str
    namespace: str
    name: str
    uri: str
    code: int | None  # None while a long-running request is still open
    received: float  # epoch seconds (requestReceivedTimestamp)

    @property
    def what(self) -> str:
        """``resource`` or ``resource/subresource``."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _request(event: dict[str, Any]) -> Request:
    ref = event.get("objectRef") or {}
    user = event.get("user") or {}
    code = (event.get("responseStatus") or {}).get("code")
    return Request(
        audit_id=str(event["auditID"]),
        user=str(user.get("username", "")),
        verb=str(event.get("verb", "")),
        resource=str(ref.get("resource", "")),
        subresource=str(ref.get("subresource", "")),
        namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")),
        uri=str(event.get("requestURI", "")),
        code=int(code) if isinstance(code, int) else None,
        received=_epoch(str(event["requestReceivedTimestamp"])),
    )


class AuditLog:
    """One apiserver's audit log, read incrementally: ``mark()`` then ``read()`` gives the
    requests received after the mark (a long-running request opened before the mark and
    ending after it is not counted again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._seen: set[str] = set()

    def mark(self) -> None:
        """Start counting from here: what the file holds now is skipped (and a request it
        holds, such as a watch still open, is not counted again when it ends)."""
        for line in self._lines():
            self._seen.add(str(json.loads(line)["auditID"]))

    def read(self) -> list[Request]:
        """Requests first seen since the last ``mark()`` or ``read()``."""
        found = []
        for line in self._lines():
            event = json.loads(line)
            audit_id = str(event["auditID"])
            if audit_id in self._seen:
                continue
            self._seen.add(audit_id)
            found.append(_request(event))
        return found

    def _lines(self) -> Iterator[str]:
        """Complete lines after the offset; a line still being written waits for the next
        read."""
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no audit log at {self.path}: the stack was started without an audit log "
                "(Stack(audit=True) or `python -m tests.stack up --audit`, in a fresh "
                "KD_STACK_DIR)"
            )
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for raw in data[:end].splitlines():
            if not raw.strip():
                continue
            yield raw.decode()


def count(
    requests: Iterable[Request], *, by: tuple[str, ...] = ("user", "verb", "what")
) -> Counter[tuple[str, ...]]:
    """How many requests per combination of the named fields (attributes of ``Request``)."""
    return Counter(tuple(str(getattr(r, f)) for f in by) for r in requests)
