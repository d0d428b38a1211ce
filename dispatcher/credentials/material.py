"""Private on-disk key material, for the TLS libraries that only read certificates from files.

urllib3 and requests load a client certificate and key (and requests a CA bundle) from file
paths, at every new connection. ``KeyMaterial`` is a directory made by ``tempfile.mkdtemp``
(mode 0700, owned by us) holding 0600 files created exclusively; ``remove()`` deletes it
and is also run when the object is garbage collected or the process exits normally.
``remove_all_key_material()`` deletes every directory still alive: for a process about to
leave by ``os._exit``, which runs neither finalizers nor ``atexit`` handlers.

I/O: creates, writes and removes files under the directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

__all__ = ["KeyMaterial", "remove_all_key_material"]


class KeyMaterial:
    """One private directory of key files; remove it when the client using it is closed."""

    def __init__(self, *, prefix: str = "kube-dispatcher-", base_dir: Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
        # mkdtemp makes it 0700 already; chmod again in case of an unusual umask-less FS.
        self.path.chmod(0o700)
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)
        _LIVE.add(self)

    def write(self, name: str, content: str) -> Path:
        """Create ``name`` (0600, never following or replacing an existing file)."""
        if not self._finalizer.alive:
            raise RuntimeError("key material was removed already")
        if os.sep in name or name in (".", ".."):
            raise ValueError("a plain file name is required")
        path = self.path / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
        return path

    @property
    def removed(self) -> bool:
        return not self._finalizer.alive

    def remove(self) -> None:
        """Delete the directory and its files (idempotent)."""
        self._finalizer()


_LIVE: weakref.WeakSet[KeyMaterial] = weakref.WeakSet()


def remove_all_key_material() -> None:
    """Delete every key directory of this process (before ``os._exit``)."""
    for material in list(_LIVE):
        material.remove()
