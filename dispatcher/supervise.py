"""Supervised threads: a loop body that no exception ends silently.

``Supervisor.spawn(name, body)`` runs ``body(thread)`` on a daemon thread called ``name``:

- an exception escaping ``body`` is logged (``thread.failed``, with the thread name and the
  traceback), counted in ``dispatcher_thread_restarts_total{thread}``, and ``body`` is
  called again after ``backoff_delay(failures in a row)`` (capped, jittered);
- ``thread.ok()`` says the body made progress: the count of failures in a row starts over
  (a long-lived loop calls it after each good round);
- ``max_failures`` failures in a row make the thread unhealthy; it is still restarted (the
  cause may pass, and the next ``ok()`` makes it healthy again);
- raising ``CannotContinue(reason)``, or returning before being stopped, ends the thread
  and leaves it unhealthy for good: ``Supervisor.healthy()`` names it and says why, and
  ``/healthz`` fails so the process is restarted.

The restart backoff sleeps through an injectable ``wait(seconds)`` (by default the thread's
own stop event's ``wait``), so tests run it without sleeping. Bodies sleep through
``thread.wait``, which returns early, and ``True``, once the thread is asked to stop.

I/O: none (threads, logs and metrics only).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from dispatcher.core.backoff import backoff_delay
from dispatcher.metrics import THREAD_RESTARTS

__all__ = ["Body", "CannotContinue", "SupervisedThread", "Supervisor", "SupervisorPolicy"]

log = structlog.get_logger(__name__)

#: The loop a supervised thread runs; it gets its own ``SupervisedThread``.
Body = Callable[["SupervisedThread"], None]
#: ``wait(seconds)``, e.g. a ``threading.Event``'s ``wait``.
Wait = Callable[[float], object]


class CannotContinue(Exception):
    """Raised by a body that must not be restarted: the thread ends, unhealthy."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class SupervisorPolicy:
    """How failing bodies are restarted and when a thread counts as unhealthy."""

    #: Failures in a row (without ``ok()`` in between) that make a thread unhealthy.
    max_failures: int = 5
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    backoff_jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not 0 < self.backoff_base_seconds <= self.backoff_max_seconds:
            raise ValueError("backoff must satisfy 0 < base <= max")


class SupervisedThread:
    """One supervised daemon thread; also the handle its body gets.

    Thread-safe: ``ok``, ``wait`` and ``stopping`` are for the body, ``stop``, ``join`` and
    ``health`` for anyone.
    """

    def __init__(
        self,
        name: str,
        body: Body,
        policy: SupervisorPolicy,
        *,
        stop: threading.Event,
        wait: Wait | None,
        draw: Callable[[], float],
        on_exit: Callable[[SupervisedThread], None],
    ) -> None:
        self.name = name
        self._body = body
        self._policy = policy
        self._stop = stop
        self._wait = wait
        self._draw = draw
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._failures = 0
        self._restarts = 0
        self._last_error = ""
        self._gave_up: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ----- for the body ------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` when the thread is asked to stop."""
        return self._stop.wait(max(0.0, seconds))

    def ok(self) -> None:
        """The body made progress: failures in a row start over."""
        with self._lock:
            self._failures = 0

    # ----- for everyone ------------------------------------------------------------------
    @property
    def failures(self) -> int:
        """Failures in a row since the last ``ok()``."""
        return self._failures

    @property
    def restarts(self) -> int:
        """Times the body was restarted after an exception, in all."""
        return self._restarts

    def health(self) -> tuple[bool, str]:
        """``(healthy, why)``; ``why`` names the thread when it is not."""
        with self._lock:
            if self._gave_up is not None:
                return False, f"thread {self.name} stopped: {self._gave_up}"
            if self._failures >= self._policy.max_failures:
                return False, (
                    f"thread {self.name} failed {self._failures} times in a row "
                    f"(last: {self._last_error})"
                )
        if not self._thread.is_alive() and not self._stop.is_set():
            return False, f"thread {self.name} is not running"
        return True, "ok"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the body to end (``stopping`` turns true, ``wait`` returns); see ``join``."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ----- the supervision loop --------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._supervise()
        finally:
            self._on_exit(self)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._body(self)
            except CannotContinue as exc:
                self._give_up(exc.reason)
                return
            except Exception as exc:
                if self._stop.is_set():
                    log.info("thread.failed_while_stopping", thread=self.name, exc_info=True)
                    return
                delay = self._failed(exc)
                log.error(
                    "thread.failed",
                    thread=self.name,
                    failures=self._failures,
                    restart_in=round(delay, 3),
                    exc_info=True,
                )
                THREAD_RESTARTS.labels(thread=self.name).inc()
                if self._wait is not None:
                    self._wait(delay)
                else:
                    self._stop.wait(delay)
                continue
            except BaseException as exc:  # SystemExit and the like: end, but never silently
                self._give_up(f"ended by {type(exc).__name__}")
                raise
            if not self._stop.is_set():
                self._give_up("its loop returned before it was stopped")
            return

    def _failed(self, exc: Exception) -> float:
        policy = self._policy
        with self._lock:
            self._failures += 1
            self._restarts += 1
            self._last_error = type(exc).__name__
            failures = self._failures
        return backoff_delay(
            failures,
            base=policy.backoff_base_seconds,
            cap=policy.backoff_max_seconds,
            jitter=policy.backoff_jitter,
            draw=self._draw(),
        )

    def _give_up(self, reason: str) -> None:
        with self._lock:
            self._gave_up = reason
        log.error("thread.gave_up", thread=self.name, reason=reason)


class Supervisor:
    """Starts supervised threads and answers for their health.

    ``wait`` replaces the restart backoff's sleeps and ``draw`` its jitter (``# fakes for
    tests``).
    """

    def __init__(
        self,
        policy: SupervisorPolicy | None = None,
        *,
        wait: Wait | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy or SupervisorPolicy()
        self._wait = wait
        self._draw = draw
        self._lock = threading.Lock()
        self._threads: dict[str, SupervisedThread] = {}

    def spawn(
        self,
        name: str,
        body: Body,
        *,
        stop: threading.Event | None = None,
        policy: SupervisorPolicy | None = None,
    ) -> SupervisedThread:
        """Start ``body`` on a new daemon thread called ``name`` (unique among live ones).

        ``stop`` is the event that ends it (a new one unless the caller has its own).
        """
        thread = SupervisedThread(
            name,
            body,
            policy or self.policy,
            stop=stop or threading.Event(),
            wait=self._wait,
            draw=self._draw,
            on_exit=self._exited,
        )
        with self._lock:
            previous = self._threads.get(name)
            if previous is not None and previous.alive:
                raise ValueError(f"a supervised thread named {name!r} is running already")
            self._threads[name] = thread
        thread.start()
        return thread

    def threads(self) -> tuple[SupervisedThread, ...]:
        with self._lock:
            return tuple(self._threads.values())

    def healthy(self) -> tuple[bool, str]:
        """``(True, "ok")``, or ``False`` and why, naming every unhealthy thread."""
        problems = [why for ok, why in (t.health() for t in self.threads()) if not ok]
        if problems:
            return False, "; ".join(problems)
        return True, "ok"

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop every thread and wait up to ``timeout`` seconds in all; ``True`` if all ended."""
        threads = self.threads()
        for thread in threads:
            thread.stop()
        deadline = time.monotonic() + timeout
        ended = True
        for thread in threads:
            ended = thread.join(max(0.0, deadline - time.monotonic())) and ended
        return ended

    def _exited(self, thread: SupervisedThread) -> None:
        # A thread stopped on purpose leaves; one that gave up stays, so health names it.
        healthy, _ = thread.health()
        if thread.stopping and healthy:
            with self._lock:
                if self._threads.get(thread.name) is thread:
                    del self._threads[thread.name]
