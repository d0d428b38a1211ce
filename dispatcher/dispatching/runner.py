"""Where the dispatcher's per-job work runs: a small thread pool (tests pass their own).

``Runner.submit(fn)`` runs ``fn`` some time later. The dispatcher never relies on the
order in which two submitted functions run (each job's events are drained by one function
at a time), which is what lets the simulation test run them in any order it chooses.

I/O: none itself; threads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import structlog

from dispatcher import metrics

log = structlog.get_logger("dispatcher.runner")

__all__ = ["Runner", "ThreadRunner"]


class Runner(Protocol):
    def submit(self, fn: Callable[[], None]) -> None: ...


class ThreadRunner:
    """``workers`` threads; an exception in one function is logged and counted, never lost."""

    def __init__(self, workers: int = 8, name: str = "dispatch-io") -> None:
        self._name = name
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    def submit(self, fn: Callable[[], None]) -> None:
        try:
            self._pool.submit(self._guarded, fn)
        except RuntimeError:  # shut down: the process is stopping
            log.info("runner.refused_after_shutdown", runner=self._name)

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            metrics.THREAD_RESTARTS.labels(thread=self._name).inc()
            log.exception("runner.task_failed", runner=self._name)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
