"""Following a job from a worker: long polls and the log stream in two threads, while
the task's own thread logs and decides (through ``progress.Watch``).

Only the calling thread logs, so lines reach the task log in order; the helper threads
put what they read on a queue. Each helper has its own ``DispatcherClient``. A follower
blocked on a quiet log stream cannot be interrupted, so helpers are daemon threads that
end with their stream or with the task's process.

I/O: HTTP to the dispatcher, threads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from dispatcher.airflow.progress import Actions, Watch, is_finished
from dispatcher.client import ApiClientError, DispatcherClient

__all__ = ["catch_up", "follow_job", "gone_message"]

#: After the job finished, a log stream silent this long has said everything.
QUIET_SECONDS = 1.5
#: And the log is given at most this long to arrive in full.
DRAIN_SECONDS = 10.0
#: The first pause before a log stream is opened again; it doubles up to the poll interval.
RETRY_FIRST_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class _JobView:
    job: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Line:
    pod: str
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class _LogEnd:
    pod: str


@dataclass(frozen=True, slots=True)
class _Failed:
    error: ApiClientError


_Event = _JobView | _Line | _LogEnd | _Failed


def follow_job(
    job: dict[str, Any],
    watch: Watch,
    *,
    client: Callable[[], DispatcherClient],
    say: Callable[[str], None],
    poll_interval: float,
    wait_timeout: float,
) -> dict[str, Any]:
    """Follow ``job`` until it is finished and its log was logged; returns the finished
    job. ``ApiClientError`` when the dispatcher cannot be asked any more (after the
    client's retries)."""
    events: queue.Queue[_Event] = queue.Queue()
    stop = threading.Event()
    job_id = str(job["id"])
    pump_stop: threading.Event | None = None

    def act(actions: Actions) -> bool:
        nonlocal pump_stop
        for line in actions.say:
            say(line)
        if actions.follow is not None:
            if pump_stop is not None:
                pump_stop.set()
            pump_stop = threading.Event()
            pod, start = actions.follow
            _start(
                _pump,
                client=client,
                job_id=job_id,
                pod=pod,
                start=start,
                events=events,
                stop=pump_stop,
                retry_interval=poll_interval,
            )
        return actions.done

    try:
        if act(watch.on_job(job)):
            return dict(watch.job)
        _start(
            _waiter,
            client=client,
            job_id=job_id,
            watch=watch,
            events=events,
            stop=stop,
            poll_interval=poll_interval,
            wait_timeout=wait_timeout,
        )
        drain_until: float | None = None
        while True:
            if watch.finished and drain_until is None:
                drain_until = time.monotonic() + DRAIN_SECONDS
            # A bounded get keeps the thread responsive to signals (SIGTERM -> on_kill).
            timeout = QUIET_SECONDS if watch.finished else 1.0
            try:
                event = events.get(timeout=timeout)
            except queue.Empty:
                if act(watch.on_quiet()):
                    return dict(watch.job)
                continue
            if isinstance(event, _Failed):
                raise event.error
            if isinstance(event, _JobView):
                done = act(watch.on_job(event.job))
            elif isinstance(event, _Line):
                done = act(watch.on_line(event.pod, event.index, event.text))
            else:
                done = act(watch.on_log_end(event.pod))
            if done or (drain_until is not None and time.monotonic() > drain_until):
                return dict(watch.job)
    finally:
        stop.set()
        if pump_stop is not None:
            pump_stop.set()


def catch_up(
    watch: Watch, *, client: Callable[[], DispatcherClient], say: Callable[[str], None]
) -> None:
    """Log what the finished pod's log still holds beyond the lines already logged, if
    the pod is still there (``on_finish_action`` may have deleted it)."""
    if not watch.needs_catch_up():
        return
    pod = str(watch.job.get("pod"))
    try:
        with client() as api:
            for index, line in enumerate(api.logs(str(watch.job["id"]))):
                for text in watch.on_line(pod, index, line).say:
                    say(text)
    except (ApiClientError, httpx.HTTPError) as exc:
        say(gone_message(watch, exc))
        return
    watch.on_log_end(pod)


def gone_message(watch: Watch, exc: Exception) -> str:
    """What to say when a finished pod's log cannot be read again."""
    pod = watch.job.get("pod")
    why = (str(exc).splitlines() or [type(exc).__name__])[0]
    if watch.progress.lines:
        return (
            f"Logged {watch.progress.lines} lines of pod {pod} while it ran; its log cannot "
            f"be read again to check for more ({why})."
        )
    return (
        f"The log of pod {pod} could not be read before the pod was removed ({why}); "
        "on_finish_action='delete_succeeded_pod' or 'keep_pod' keeps pods for their logs."
    )


def _start(target: Callable[..., None], **kwargs: Any) -> None:
    name = f"dispatcher-{target.__name__.strip('_')}"
    threading.Thread(target=target, kwargs=kwargs, daemon=True, name=name).start()


def _waiter(
    *,
    client: Callable[[], DispatcherClient],
    job_id: str,
    watch: Watch,
    events: queue.Queue[_Event],
    stop: threading.Event,
    poll_interval: float,
    wait_timeout: float,
) -> None:
    with client() as api:
        while not stop.is_set():
            try:
                # The watch's job is read without a lock: a stale state only makes one
                # poll shorter or longer.
                job = api.wait(job_id, watch.next_wait_seconds(poll_interval, wait_timeout))
            except ApiClientError as exc:
                events.put(_Failed(exc))
                return
            events.put(_JobView(job))
            if is_finished(job):
                return


def _pump(
    *,
    client: Callable[[], DispatcherClient],
    job_id: str,
    pod: str,
    start: int,
    events: queue.Queue[_Event],
    stop: threading.Event,
    retry_interval: float,
) -> None:
    """Follow the pod's log, putting lines ``start`` onwards on the queue; re-open the
    stream after it ends or fails (no container yet, a dropped connection) until told
    to stop, soon at first: a short task's pod may be gone a moment after it ends."""
    delivered = start
    pause = RETRY_FIRST_SECONDS
    with client() as api:
        while not stop.is_set():
            try:
                for index, line in enumerate(api.logs(job_id, follow=True)):
                    if stop.is_set():
                        return
                    if index >= delivered:
                        events.put(_Line(pod, index, line))
                        delivered = index + 1
                events.put(_LogEnd(pod))
            except (ApiClientError, httpx.HTTPError):
                pass
            stop.wait(pause)
            pause = min(pause * 2, retry_interval)
