"""Writing job records under the leader term: the only way the dispatcher changes a record.

Every write names the current leader term (``Fence``) and the version it replaces; the
store refuses a write made under an older term (``Fenced``) or over a newer version
(``StaleRecord``). The first refusal for the term stops this replica for good: ``fenced``
turns true, ``on_fenced`` is called, and every later write is refused here without being
sent. Each write is counted in ``RECORD_WRITES`` by verb and outcome.

I/O: through the injected ``RecordStore``.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from dispatcher import metrics
from dispatcher.dispatching.jobs import Job
from dispatcher.dispatching.records import Fence, RecordStore, Stored
from dispatcher.errors import Fenced, StaleRecord, StoreError

log = structlog.get_logger("dispatcher.dispatching")

__all__ = ["Recorder"]


class Recorder:
    def __init__(
        self,
        store: RecordStore,
        fence: Callable[[], Fence | None],
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._fence = fence
        self._on_fenced = on_fenced
        self._fenced = False

    @property
    def fenced(self) -> bool:
        """True once a write was refused for the leader term: this replica stopped."""
        return self._fenced

    def fence(self) -> Fence:
        """The current leader term; ``Fenced`` (and this replica stops) if there is none."""
        fence = None if self._fenced else self._fence()
        if fence is None:
            self.lost("no current leader term")
            raise Fenced("this replica does not hold the leader lease; retry")
        return fence

    def lost(self, why: str) -> None:
        if self._fenced:
            return
        self._fenced = True
        log.error("dispatch.fenced", why=why)
        if self._on_fenced is not None:
            self._on_fenced()

    def create(self, job: Job) -> str:
        """Create the record of a new job; its version. ``StaleRecord``: it exists."""
        return self._counted("create", lambda fence: self._store.create(job.to_record(), fence))

    def update(self, old: Job, new: Job) -> str:
        """Write ``new`` over ``old``'s version; the new version."""
        return self._counted(
            "update", lambda fence: self._store.update(new.to_record(), old.version, fence)
        )

    def delete(self, job_id: str) -> None:
        def delete(fence: Fence) -> str:
            self._store.delete(job_id, fence)
            return ""

        self._counted("delete", delete)

    def read(self, job_id: str) -> Stored | None:
        return self._store.get(job_id)

    def list(self) -> list[Stored]:
        return self._store.list()

    def _counted(self, verb: str, write: Callable[[Fence], str]) -> str:
        fence = self.fence()
        try:
            version = write(fence)
        except Fenced as exc:
            metrics.RECORD_WRITES.labels(verb=verb, outcome="fenced").inc()
            self.lost(str(exc))
            raise
        except StaleRecord:
            metrics.RECORD_WRITES.labels(verb=verb, outcome="stale").inc()
            raise
        except StoreError:
            metrics.RECORD_WRITES.labels(verb=verb, outcome="error").inc()
            raise
        metrics.RECORD_WRITES.labels(verb=verb, outcome="ok").inc()
        return version
