"""The history folder's layout and its writers; imports nothing of the dispatcher, so the
checker can read a history whatever state the dispatcher's code is in.

I/O: writes files in the history folder.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENT_FILE",
    "FAULTS_FILE",
    "META_FILE",
    "PODS_FILE",
    "HistoryFiles",
    "JsonLines",
    "stamp",
]

META_FILE = "meta.json"
PODS_FILE = "pods.jsonl"
CLIENT_FILE = "client.jsonl"
FAULTS_FILE = "faults.jsonl"


def stamp(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with ``t`` and ``mono`` set to now unless it has them."""
    return {"t": time.time(), "mono": time.monotonic(), **record}


class JsonLines:
    """An append-only JSON-lines file, safe to write from many threads; each line flushed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        stamped = stamp(record)
        line = json.dumps(stamped, sort_keys=True, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
        return stamped

    def close(self) -> None:
        with self._lock:
            self._file.close()


class HistoryFiles:
    """The writers of one history folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.pods = JsonLines(folder / PODS_FILE)
        self.client = JsonLines(folder / CLIENT_FILE)
        self.faults = JsonLines(folder / FAULTS_FILE)

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        (self.folder / META_FILE).write_text(json.dumps(stamp(meta), indent=2, sort_keys=True))

    def close(self) -> None:
        for writer in (self.pods, self.client, self.faults):
            writer.close()
