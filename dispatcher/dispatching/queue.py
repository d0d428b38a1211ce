"""Queued jobs grouped by routing shape, kept up to date from the job table's changes.

Jobs with the same routing shape (``cycle.routing_shape``: tenant, excluded clusters and
every field routing reads) get the same decision on the same snapshot, so the routing
turn asks once per shape, not once per job. ``RoutingQueue`` keeps, per shape, its queued
jobs in queue order (priority, then submission time, then id: within a shape the priority
and tenant are the same). It learns of changes through ``JobTable.listen``: each change
marks its job, and ``refresh`` (on the dispatch loop) moves only the marked jobs, so
keeping the index costs O(log n) per job change and nothing per cycle.

I/O: none; a lock for the marks, which the table's listeners set from any thread.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dispatcher.core.lifecycle import State
from dispatcher.dispatching.jobs import Job
from dispatcher.dispatching.table import JobTable

__all__ = ["QueueKey", "RoutingQueue", "ShapeGroup", "queue_key"]

#: Where a job stands in its shape's queue.
QueueKey = tuple[int, float, str]


def queue_key(job: Job) -> QueueKey:
    """Higher priority first, then the oldest, then by id (equal inputs, equal order)."""
    return (-job.spec.requirements.priority, job.submitted_at, job.id)


@dataclass(slots=True)
class ShapeGroup:
    """The queued jobs of one routing shape, in queue order."""

    shape: str
    keys: list[QueueKey] = field(default_factory=list)
    #: The last waiting reason written to the group's jobs, and the jobs that joined since
    #: (``Router`` writes a reason to them without visiting the others).
    reason: str | None = None
    joined: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.keys)


class RoutingQueue:
    def __init__(self, table: JobTable, shape: Callable[[Job], str]) -> None:
        self._table = table
        self._shape = shape
        self._lock = threading.Lock()
        self._marked: set[str] = set()
        self._groups: dict[str, ShapeGroup] = {}
        #: Job id -> (shape, key) where it is queued.
        self._where: dict[str, tuple[str, QueueKey]] = {}
        #: Whether the queue changed since ``take_changed`` last answered.
        self._changed_since = False
        table.listen(self._mark)
        # Jobs already in the table (a router made after them, as in tests) are taken too.
        for job in table.all():
            self._mark(job.id)

    def _mark(self, job_id: str) -> None:
        with self._lock:
            self._marked.add(job_id)

    def refresh(self) -> bool:
        """Take in the job changes seen since the last call; whether the queue changed."""
        with self._lock:
            marked, self._marked = self._marked, set()
        changed = False
        for job_id in marked:
            job = self._table.get(job_id)
            place = None
            if job is not None and job.state is State.QUEUED:
                place = (self._shape(job), queue_key(job))
            before = self._where.get(job_id)
            if before == place:
                continue
            changed = True
            if before is not None:
                self._remove(job_id, *before)
            if place is not None:
                self._insert(job_id, *place)
        self._changed_since = self._changed_since or changed
        return changed

    def take_changed(self) -> bool:
        """Take in the job changes; whether the queue changed since the last call (refreshes
        made meanwhile for other readers included)."""
        self.refresh()
        changed, self._changed_since = self._changed_since, False
        return changed

    def _insert(self, job_id: str, shape: str, key: QueueKey) -> None:
        group = self._groups.get(shape)
        if group is None:
            group = self._groups[shape] = ShapeGroup(shape)
        bisect.insort(group.keys, key)
        group.joined.add(job_id)
        self._where[job_id] = (shape, key)

    def _remove(self, job_id: str, shape: str, key: QueueKey) -> None:
        del self._where[job_id]
        group = self._groups[shape]
        index = bisect.bisect_left(group.keys, key)
        if index < len(group.keys) and group.keys[index] == key:
            del group.keys[index]
        group.joined.discard(job_id)
        if not group.keys:
            del self._groups[shape]

    def groups(self) -> list[ShapeGroup]:
        return list(self._groups.values())

    def jobs(self, group: ShapeGroup, start: int = 0) -> Iterator[tuple[int, Job]]:
        """The group's jobs from position ``start`` on, as the table holds them now."""
        for index in range(start, len(group.keys)):
            job = self._table.get(group.keys[index][2])
            if job is not None:
                yield index, job

    def __len__(self) -> int:
        return len(self._where)

    def oldest(self) -> float | None:
        """The earliest submission time among queued jobs (O(shapes))."""
        return min((g.keys[0][1] for g in self._groups.values()), default=None)
