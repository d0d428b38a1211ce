"""The dispatcher's jobs in memory: the last committed value of each, and who waits on them.

Only a job whose record was written is committed here (``commit``); readers (the API,
long polls, metrics) see nothing the record store does not also hold. ``touch`` changes
this process's own bookkeeping of a job (its timers), never a persisted field.

I/O: none; a lock and a condition for long polls, and listeners told of every change
(``listen``) for waiters that are not threads (the API's coroutines).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import structlog

from dispatcher.dispatching.jobs import Job
from dispatcher.errors import NotFound

__all__ = ["JobTable"]

log = structlog.get_logger("dispatcher.jobs")


class JobTable:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        #: (state, cluster) -> how many jobs: kept with every write, so that gauges do
        #: not walk every job each cycle.
        self._counts: Counter[tuple[str, str]] = Counter()
        self._submitting: set[str] = set()
        self._listeners: list[Callable[[str], None]] = []

    def listen(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(job_id)`` after every change of a job's committed value (put,
        adopt, commit, drop), on the thread that made it, outside the lock: it must not block."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def _tell(self, job_id: str) -> None:
        for listener in self._listeners:
            try:
                listener(job_id)
            except Exception:
                # A listener's fault must not undo a commit the record store already holds.
                log.exception("jobs.listener_failed", job_id=job_id)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", job_id=job_id)
        return job

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def _set(self, job: Job) -> None:
        """Store ``job`` (under the lock), keeping the counts."""
        old = self._jobs.get(job.id)
        if old is not None:
            self._count(old, -1)
        self._jobs[job.id] = job
        self._count(job, 1)

    def _count(self, job: Job, sign: int) -> None:
        key = (job.state.value, job.cluster or "")
        self._counts[key] += sign
        if not self._counts[key]:
            del self._counts[key]

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs per (state, cluster), without visiting them."""
        with self._lock:
            return dict(self._counts)

    def select(self, keep: Callable[[Job], bool]) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if keep(j)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def put(self, job: Job) -> None:
        """Take a job as the record store holds it (submission, restart, re-read)."""
        with self._lock:
            self._set(job)
            self._changed.notify_all()
        self._tell(job.id)

    def adopt(self, job: Job) -> Job:
        """``job`` unless another value is already known for its id; the one kept."""
        with self._lock:
            kept = self._jobs.get(job.id)
            if kept is None:
                self._set(job)
                kept = job
        if kept is job:
            self._tell(job.id)
        return kept

    def commit(self, job: Job) -> Job:
        """Publish a written job (unless it was forgotten meanwhile) and wake long polls."""
        with self._lock:
            if job.id in self._jobs:
                self._set(job)
            self._changed.notify_all()
        self._tell(job.id)
        return job

    def touch(self, job_id: str, **fields: Any) -> None:
        """Change this process's own bookkeeping (timers) of the job as it is now."""
        with self._lock:
            current = self._jobs.get(job_id)
            if current is not None:
                self._set(replace(current, **fields))

    def touch_if(self, job_id: str, keep: Callable[[Job], bool], **fields: Any) -> None:
        """``touch`` if the job, as it is now, passes ``keep``."""
        with self._lock:
            current = self._jobs.get(job_id)
            if current is not None and keep(current):
                self._set(replace(current, **fields))

    def replace_if_same(self, old: Job, **fields: Any) -> None:
        """Change unpersisted fields of ``old`` only if nothing changed the job meanwhile."""
        with self._lock:
            if self._jobs.get(old.id) is old:
                self._set(replace(old, **fields))

    def drop(self, job_id: str) -> None:
        with self._lock:
            gone = self._jobs.pop(job_id, None)
            if gone is not None:
                self._count(gone, -1)
            self._changed.notify_all()
        self._tell(job_id)

    @contextmanager
    def submitting(self, job_id: str) -> Iterator[Job | None]:
        """Serialise submissions of one id: yields the job already known for it, if any;
        otherwise the caller creates it before a concurrent submission of it looks."""
        with self._lock:
            while job_id in self._submitting:
                self._changed.wait()
            existing = self._jobs.get(job_id)
            if existing is None:
                self._submitting.add(job_id)
        if existing is not None:
            yield existing
            return
        try:
            yield None
        finally:
            with self._lock:
                self._submitting.discard(job_id)
                self._changed.notify_all()

    def wait_finished(self, job_id: str, timeout: float, monotonic: Callable[[], float]) -> Job:
        """The job once finished, or as it is after ``timeout`` seconds (long poll)."""
        deadline = monotonic() + timeout
        with self._lock:
            job = self.require(job_id)
            while not job.state.finished:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(timeout=remaining)
                job = self._jobs.get(job_id, job)
            return job
