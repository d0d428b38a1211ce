"""Long polls and log follows that never hold the worker threads ordinary requests need.

The API's plain ``def`` endpoints run on anyio's default thread pool (40 threads). A long
poll holding one of them for its whole timeout, or a log follow for its pod's life, starves
``/healthz``, ``/readyz`` and every short request as soon as a few dozen clients wait at
once. So:

- a long poll is a coroutine awaiting its job's next change: ``JobChanges`` turns the
  dispatcher's change notices (made on its own threads) into wake-ups of the coroutines
  waiting on that job, each on its own event loop, without blocking the notifying thread;
- a log follow reads its stream on a thread of a limiter of its own (``read_line``), never
  one of the default pool; cancelled (its client went away), it closes the stream, so the
  blocked read ends and the thread is given back at once;
- ``Bound`` counts what each caller (and the replica) has open: past its setting, a
  request is refused with ``LimitReached`` (429 or 503, with ``Retry-After``).

I/O: none of its own (event loops, threads; the log stream belongs to the cluster edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
from anyio import CapacityLimiter

from dispatcher import metrics
from dispatcher.dispatching.ports import LogStream

__all__ = ["Bound", "JobChanges", "LimitReached", "Slot", "read_line"]


#: What each kind of long request is called in refusals.
_WHAT = {"wait": "long polls", "follow": "log follows", "events": "console live-update streams"}


class LimitReached(Exception):
    """A long request over a bound: 429 (``per_client``) or 503 (the replica's)."""

    def __init__(self, kind: str, setting: str, limit: int, *, per_client: bool) -> None:
        self.kind = kind
        self.setting = setting
        self.limit = limit
        self.per_client = per_client
        what = _WHAT.get(kind, kind)
        who = "this caller" if per_client else "this replica (all callers together)"
        super().__init__(
            f"{who} has {limit} {what} open, the most {setting} allows; retry once "
            "one of them has ended"
        )


class Slot:
    """One long request counted by a ``Bound``; ``release`` may be called more than once."""

    def __init__(self, bound: Bound, key: str) -> None:
        self._bound = bound
        self._key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._bound.give_back(self._key)


class Bound:
    """At most ``limit`` open long requests of one ``kind`` per key (a caller's identity,
    or one key for the whole replica). Any thread may take and release."""

    def __init__(self, kind: str, limit: int, setting: str, *, per_client: bool) -> None:
        self.kind = kind
        self.limit = limit
        self.setting = setting
        self.per_client = per_client
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def take(self, key: str = "") -> Slot:
        """A slot for ``key``, or ``LimitReached`` when it has ``limit`` open already."""
        with self._lock:
            count = self._open.get(key, 0)
            if count >= self.limit:
                scope = "client" if self.per_client else "replica"
                metrics.API_LONG_REQUESTS_REFUSED.labels(kind=self.kind, scope=scope).inc()
                raise LimitReached(self.kind, self.setting, self.limit, per_client=self.per_client)
            self._open[key] = count + 1
        return Slot(self, key)

    def give_back(self, key: str) -> None:
        with self._lock:
            count = self._open.get(key, 0) - 1
            if count > 0:
                self._open[key] = count
            else:
                self._open.pop(key, None)

    def open(self, key: str = "") -> int:
        with self._lock:
            return self._open.get(key, 0)


class _Waiter:
    """One coroutine waiting on a job, woken from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def wake(self) -> None:
        # call_soon_threadsafe never blocks the dispatcher's thread; a closed loop has
        # nobody left to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def changed(self, timeout: float) -> None:
        """Return after the job's next change (or one since the last call), or after
        ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            await self._event.wait()
        self._event.clear()


class JobChanges:
    """Who waits on which job; ``changed`` (the dispatcher's listener) wakes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[_Waiter]] = {}

    def changed(self, job_id: str) -> None:
        """``job_id`` changed (called on the dispatcher's threads): wake its waiters."""
        with self._lock:
            waiters = tuple(self._waiting.get(job_id, ()))
        for waiter in waiters:
            waiter.wake()

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[_Waiter]:
        """Register before reading the job, so no change between read and wait is missed."""
        waiter = _Waiter(asyncio.get_running_loop())
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiting.get(job_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiting[job_id]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiting.values())


@dataclass(frozen=True, slots=True)
class _Read:
    line: str | None = None
    error: Exception | None = None


def _next(lines: LogStream) -> _Read:
    try:
        return _Read(line=next(lines))
    except StopIteration:
        return _Read()
    except Exception as exc:  # raised on the event loop by ``read_line``
        return _Read(error=exc)


async def read_line(lines: LogStream, limiter: CapacityLimiter) -> str | None:
    """The stream's next line (``None`` at its end), read on a thread of ``limiter``.

    Cancelled while the thread waits for a line, it closes the stream (which ends that
    read) and returns only once the thread has: a thread is never left behind holding a
    stream nobody reads.
    """
    done: list[_Read] = []

    async with anyio.create_task_group() as group:

        async def read() -> None:
            # Not abandoned on cancellation: the limiter's token stays held until the
            # thread has returned.
            done.append(await anyio.to_thread.run_sync(_next, lines, limiter=limiter))
            group.cancel_scope.cancel()

        group.start_soon(read)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            if not done:
                lines.close()
            raise
    result = done[0]
    if result.error is not None:
        raise result.error
    return result.line
