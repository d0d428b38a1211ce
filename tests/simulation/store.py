"""The job record store of the simulated world, and how the invariants read records.

``RecordingStore`` is ``MemoryRecords`` (the dispatcher's own in-memory store, with the
Kubernetes store's semantics: versions, ``StaleRecord``, the term check) plus a history of
every write that took effect, whoever made it and whether the writer heard back, and
faults armed for the next write. The invariants read ``history`` and ``peek``, never what
a dispatcher believes.

No I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from dispatcher.dispatching.records import Fence, MemoryRecords, Stored
from dispatcher.errors import StoreError

if TYPE_CHECKING:
    from tests.simulation.world import World

__all__ = [
    "FINISHED_STATES",
    "RecordingStore",
    "StoreFault",
    "Write",
    "record_attempts",
    "record_state",
]

FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "rejected"})


def record_state(record: Mapping[str, Any]) -> str | None:
    """The job state a record holds (``state``, or ``status.state``)."""
    state = record.get("state")
    if state is None:
        state = (record.get("status") or {}).get("state")
    return None if state is None else str(state)


def record_attempts(record: Any) -> set[tuple[str, str]]:
    """Every (cluster, pod name) a record names as an attempt, wherever it does."""
    found: set[tuple[str, str]] = set()
    if isinstance(record, Mapping):
        cluster = record.get("cluster")
        pod = record.get("pod") or record.get("pod_name") or record.get("podName")
        if isinstance(cluster, str) and isinstance(pod, str):
            found.add((cluster, pod))
        for value in record.values():
            found |= record_attempts(value)
    elif isinstance(record, list | tuple):
        for value in record:
            found |= record_attempts(value)
    return found


class StoreFault(StrEnum):
    """What the next matching write to the record store runs into."""

    ERROR_BEFORE = "error-before"  # StoreError; nothing written
    ERROR_AFTER = "error-after"  # written, then StoreError (the answer was lost)
    STALE = "stale"  # a concurrent writer touched the record just before: StaleRecord


@dataclass(frozen=True)
class Write:
    """One write that took effect in the record store."""

    seq: int
    at: float
    op: str  # "create" | "update" | "delete" | "touch"
    job_id: str
    record: dict[str, Any] | None  # None for a delete
    version: str | None
    writer: str  # the fence's holder, or "external"
    term: int
    answered: bool  # False when the writer was told it failed (StoreError after the write)


class RecordingStore:
    """``MemoryRecords`` with a history of every write that took effect, and faults.

    The invariants read ``history`` and ``peek``, never what the dispatcher believes.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.inner = MemoryRecords()
        self.history: list[Write] = []
        self.faults: list[tuple[StoreFault, str | None]] = []
        self.reads = 0
        self.refusals: list[str] = []

    # ----- faults and the world's view --------------------------------------------------------
    def arm(self, fault: StoreFault, job_id: str | None = None) -> None:
        self.faults.append((fault, job_id))

    def _take(self, job_id: str) -> StoreFault | None:
        for index, (fault, only) in enumerate(self.faults):
            if only is None or only == job_id:
                del self.faults[index]
                self.world.log(f"store: write of {job_id} meets {fault.value}")
                return fault
        return None

    def peek(self, job_id: str) -> Stored | None:
        """The record as it is (not a dispatcher's read: no fault, not counted)."""
        return self.inner.get(job_id)

    def touch(self, job_id: str) -> bool:
        """Someone else (``kubectl annotate``, another controller) writes the record
        unchanged: its version moves on, so a writer holding the old one gets StaleRecord."""
        stored = self.inner.get(job_id)
        if stored is None:
            return False
        term = self.inner.current_term
        version = self.inner.update(stored.record, stored.version, Fence("external", term))
        self._log("touch", job_id, stored.record, version, "external", term, answered=True)
        return True

    def _log(
        self,
        op: str,
        job_id: str,
        record: dict[str, Any] | None,
        version: str | None,
        writer: str,
        term: int,
        *,
        answered: bool,
    ) -> None:
        state = record_state(record) if record is not None else None
        self.world.log(
            f"store: {op} {job_id}{f' {state}' if state else ''} by {writer} (term {term})"
            + ("" if answered else ", answer lost")
        )
        self.history.append(
            Write(
                len(self.history),
                self.world.clock(),
                op,
                job_id,
                copy.deepcopy(record),
                version,
                writer,
                term,
                answered,
            )
        )

    def _refused(self, text: str) -> None:
        self.refusals.append(text)
        self.world.log(f"store: refused {text}")

    def _alive(self, fence: Fence) -> None:
        if fence.holder in self.world.dead:
            from tests.simulation.world import ProcessExited

            raise ProcessExited(fence.holder)

    def _before(self, job_id: str) -> StoreFault | None:
        fault = self._take(job_id)
        if fault is StoreFault.ERROR_BEFORE:
            raise StoreError(
                f"job record {job_id}: etcdserver: request timed out (sim)", job_id=job_id
            )
        if fault is StoreFault.STALE:
            self.touch(job_id)
        return fault

    # ----- RecordStore ------------------------------------------------------------------------
    def create(self, record: dict[str, Any], fence: Fence) -> str:
        self._alive(fence)
        job_id = str(record.get("id"))
        fault = self._before(job_id)
        try:
            version = self.inner.create(record, fence)
        except StoreError as exc:
            self._refused(f"create {job_id} by {fence.holder}: {exc}")
            raise
        self._log(
            "create",
            job_id,
            record,
            version,
            fence.holder,
            fence.term,
            answered=fault is not StoreFault.ERROR_AFTER,
        )
        if fault is StoreFault.ERROR_AFTER:
            raise StoreError(f"job record {job_id}: the answer was lost (sim)", job_id=job_id)
        return version

    def update(self, record: dict[str, Any], version: str, fence: Fence) -> str:
        self._alive(fence)
        job_id = str(record.get("id"))
        fault = self._before(job_id)
        try:
            new = self.inner.update(record, version, fence)
        except StoreError as exc:
            self._refused(f"update {job_id} by {fence.holder}: {exc}")
            raise
        self._log(
            "update",
            job_id,
            record,
            new,
            fence.holder,
            fence.term,
            answered=fault is not StoreFault.ERROR_AFTER,
        )
        if fault is StoreFault.ERROR_AFTER:
            raise StoreError(f"job record {job_id}: the answer was lost (sim)", job_id=job_id)
        return new

    def get(self, job_id: str) -> Stored | None:
        self.reads += 1
        return self.inner.get(job_id)

    def delete(self, job_id: str, fence: Fence, version: str | None = None) -> None:
        self._alive(fence)
        fault = self._before(job_id)
        existed = self.inner.get(job_id) is not None
        try:
            self.inner.delete(job_id, fence, version)
        except StoreError as exc:
            self._refused(f"delete {job_id} by {fence.holder}: {exc}")
            raise
        if existed:
            self._log(
                "delete",
                job_id,
                None,
                None,
                fence.holder,
                fence.term,
                answered=fault is not StoreFault.ERROR_AFTER,
            )
        if fault is StoreFault.ERROR_AFTER:
            raise StoreError(f"job record {job_id}: the answer was lost (sim)", job_id=job_id)

    def list(self) -> list[Stored]:
        self.reads += 1
        return self.inner.list()
