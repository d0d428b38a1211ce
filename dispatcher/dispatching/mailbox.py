"""Per-job mailboxes: a job's events are handled one at a time, in the order they came.

Every event of a job (a placement, the create's answer, an informer observation, a timer,
a cancel) is posted to the job's mailbox. One runner task at a time drains a mailbox, so
two events of one job are never handled concurrently, while different jobs' events run in
parallel on the runner. A handler that raises has its mail retried after a capped
exponential backoff (and dropped, logged, after ``MAX_RETRIES``); mails may also be
posted for later (``post_later``), to be delivered by ``deliver_due``.

I/O: none itself; hands work to the injected runner.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from dispatcher import metrics
from dispatcher.core.backoff import backoff_delay
from dispatcher.core.lifecycle import Event
from dispatcher.dispatching.runner import Runner
from dispatcher.errors import DispatcherError

log = structlog.get_logger("dispatcher.dispatching")

__all__ = ["MAX_RETRIES", "RESOLVE", "Mail", "Mailboxes"]

#: A mailbox item that reads the attempt's pod; not an event of the state machine.
RESOLVE = "resolve"
#: A mail whose handler raised this many times in a row is dropped (and logged).
MAX_RETRIES = 20


@dataclass
class Mail:
    kind: Event | str
    payload: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    #: What the handler concluded, for a waiting caller (cancel, acknowledge).
    error: DispatcherError | None = None


class Mailboxes:
    """One FIFO per job id, drained by ``handle`` on the runner, one drain per job at a time."""

    def __init__(
        self,
        runner: Runner,
        handle: Callable[[str, Mail], None],
        *,
        clock: Callable[[], float],
        draw: Callable[[], float],
    ) -> None:
        self._runner = runner
        self._handle = handle
        self._clock = clock
        self._draw = draw
        self._lock = threading.Lock()
        self._boxes: dict[str, deque[Mail]] = {}
        self._draining: set[str] = set()
        self._delayed: list[tuple[float, str, Mail]] = []

    def post(self, job_id: str, mail: Mail) -> Mail:
        with self._lock:
            self._boxes.setdefault(job_id, deque()).append(mail)
            if job_id in self._draining:
                return mail
            self._draining.add(job_id)
        self._runner.submit(lambda: self._drain(job_id))
        return mail

    def post_later(self, job_id: str, mail: Mail, delay: float) -> None:
        with self._lock:
            self._delayed.append((self._clock() + delay, job_id, mail))

    def deliver_due(self, now: float) -> None:
        """Post the mails whose delay has passed."""
        with self._lock:
            due = [(job_id, mail) for at, job_id, mail in self._delayed if at <= now]
            self._delayed = [d for d in self._delayed if d[0] > now]
        for job_id, mail in due:
            self.post(job_id, mail)

    def busy(self, job_id: str) -> bool:
        """Whether the job has mail waiting or being handled (its state is about to change)."""
        with self._lock:
            return job_id in self._draining or bool(self._boxes.get(job_id))

    def pending(self, job_id: str) -> set[Event | str]:
        """The kinds of the job's mails not handled yet: waiting, or delayed (a retry)."""
        with self._lock:
            kinds = {m.kind for m in self._boxes.get(job_id, ())}
            kinds.update(m.kind for _, j, m in self._delayed if j == job_id)
            return kinds

    def retry(self, job_id: str, mail: Mail) -> None:
        """Deliver ``mail`` again after a backoff that grows with its failures."""
        failures = int(mail.payload.get("_failures", 0)) + 1
        if failures > MAX_RETRIES:
            log.error("job.event_dropped", job_id=job_id, on=str(mail.kind))
            return
        again = Mail(mail.kind, {**mail.payload, "_failures": failures})
        self.post_later(job_id, again, backoff_delay(failures, cap=30.0, draw=self._draw()))

    def _drain(self, job_id: str) -> None:
        try:
            self._drain_box(job_id)
        except BaseException:
            # Never leave a job marked as being drained by a task that is gone.
            with self._lock:
                self._draining.discard(job_id)
                again = bool(self._boxes.get(job_id))
            if again:
                self.post_later(job_id, Mail(RESOLVE), 1.0)
            raise

    def _drain_box(self, job_id: str) -> None:
        while True:
            with self._lock:
                box = self._boxes.get(job_id)
                if not box:
                    self._boxes.pop(job_id, None)
                    self._draining.discard(job_id)
                    return
                mail = box.popleft()
            try:
                self._handle(job_id, mail)
            except Exception:
                metrics.THREAD_RESTARTS.labels(thread="job-mailbox").inc()
                log.exception("job.event_failed", job_id=job_id, on=str(mail.kind))
                self.retry(job_id, mail)
            finally:
                mail.done.set()
