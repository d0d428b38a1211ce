"""``DispatcherJobTrigger``: waits for a job in Airflow's triggerer, freeing the worker.

It long-polls the dispatcher's wait endpoint (short polls only until the pod starts, to
begin following its log soon) and streams the pod's log into the task log as it is
written, through the same ``progress.Watch`` the worker uses; the lines it logged are
counted in the event, so the resumed task logs none of them again.

I/O: HTTP to the dispatcher (``aio.AsyncDispatcherClient``), in the triggerer's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from dispatcher.airflow.aio import AsyncDispatcherClient
from dispatcher.airflow.connection import ConnectionSettings
from dispatcher.airflow.following import DRAIN_SECONDS, QUIET_SECONDS, RETRY_FIRST_SECONDS
from dispatcher.airflow.hooks import settings_for
from dispatcher.airflow.progress import Actions, Progress, Watch, is_finished
from dispatcher.airflow.provider import DEFAULT_CONN_ID
from dispatcher.client import ApiClientError

__all__ = ["DispatcherJobTrigger"]


class DispatcherJobTrigger(BaseTrigger):
    """Fires once, when the job is finished (or the dispatcher cannot be asked).

    The event's payload: ``{"status": "finished", "job": {...}, "progress": {...},
    "caught_up": bool}`` or ``{"status": "error", "job_id": ..., "message": ...,
    "progress": {...}}``.
    """

    def __init__(
        self,
        *,
        job_id: str,
        dispatcher_conn_id: str = DEFAULT_CONN_ID,
        progress: dict[str, Any] | None = None,
        get_logs: bool = True,
        log_prefix: str | None = "base",
        poll_interval: float = 2.0,
        wait_timeout: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's own is untyped
        self.job_id = job_id
        self.dispatcher_conn_id = dispatcher_conn_id
        self.progress = dict(progress or {})
        self.get_logs = get_logs
        self.log_prefix = log_prefix
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "dispatcher_conn_id": self.dispatcher_conn_id,
                "progress": self.progress,
                "get_logs": self.get_logs,
                "log_prefix": self.log_prefix,
                "poll_interval": self.poll_interval,
                "wait_timeout": self.wait_timeout,
            },
        )

    async def _settings(self) -> ConnectionSettings:
        aget = getattr(BaseHook, "aget_connection", None)
        if aget is None:  # Airflow < 3.2 has no async connection lookup
            conn = await asyncio.to_thread(BaseHook.get_connection, self.dispatcher_conn_id)
        else:
            conn = await aget(self.dispatcher_conn_id)
        return settings_for(conn)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watch = Watch(
            Progress.from_dict(self.progress), get_logs=self.get_logs, prefix=self.log_prefix
        )
        try:
            settings = await self._settings()
            async with AsyncDispatcherClient(settings) as client:
                job = await self._follow(client, watch, settings.wait_timeout)
        except (ApiClientError, ValueError) as exc:
            yield TriggerEvent(  # type: ignore[no-untyped-call]  # untyped in Airflow
                {
                    "status": "error",
                    "job_id": self.job_id,
                    "message": str(exc),
                    "progress": watch.progress.to_dict(),
                }
            )
            return
        yield TriggerEvent(  # type: ignore[no-untyped-call]  # untyped in Airflow
            {
                "status": "finished",
                "job": job,
                "progress": watch.progress.to_dict(),
                "caught_up": watch.caught_up,
            }
        )

    async def on_kill(self) -> None:
        """The user killed the deferred task (mark failed, clear): cancel the job."""
        settings = await self._settings()
        async with AsyncDispatcherClient(settings) as client:
            job = await client.cancel(self.job_id)
        self.log.info("Cancelled job %s (%s)", self.job_id, job.get("state"))

    async def _follow(
        self, client: AsyncDispatcherClient, watch: Watch, wait_timeout: float
    ) -> dict[str, Any]:
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        waiter = asyncio.create_task(
            self._wait(client, watch, events, self.wait_timeout or wait_timeout)
        )
        pump: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        drain_until: float | None = None
        try:
            while True:
                if watch.finished and drain_until is None:
                    drain_until = loop.time() + DRAIN_SECONDS
                try:
                    event = await asyncio.wait_for(
                        events.get(), QUIET_SECONDS if watch.finished else None
                    )
                except TimeoutError:
                    actions = watch.on_quiet()
                else:
                    kind = event[0]
                    if kind == "failed":
                        raise event[1]
                    if kind == "job":
                        actions = watch.on_job(event[1])
                    elif kind == "line":
                        actions = watch.on_line(event[1], event[2], event[3])
                    else:
                        actions = watch.on_log_end(event[1])
                pump = self._act(actions, client, events, pump)
                if actions.done or (drain_until is not None and loop.time() > drain_until):
                    return dict(watch.job)
        finally:
            for task in (waiter, pump):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    def _act(
        self,
        actions: Actions,
        client: AsyncDispatcherClient,
        events: asyncio.Queue[tuple[Any, ...]],
        pump: asyncio.Task[None] | None,
    ) -> asyncio.Task[None] | None:
        for line in actions.say:
            self.log.info("%s", line)
        if actions.follow is None:
            return pump
        if pump is not None:
            pump.cancel()
        pod, start = actions.follow
        return asyncio.create_task(self._pump(client, pod, start, events))

    async def _wait(
        self,
        client: AsyncDispatcherClient,
        watch: Watch,
        events: asyncio.Queue[tuple[Any, ...]],
        wait_timeout: float,
    ) -> None:
        try:
            job = await client.get(self.job_id)
            await events.put(("job", job))
            while not is_finished(job):
                job = await client.wait(
                    self.job_id, watch.next_wait_seconds(self.poll_interval, wait_timeout)
                )
                await events.put(("job", job))
        except ApiClientError as exc:
            await events.put(("failed", exc))

    async def _pump(
        self,
        client: AsyncDispatcherClient,
        pod: str,
        start: int,
        events: asyncio.Queue[tuple[Any, ...]],
    ) -> None:
        delivered = start
        pause = RETRY_FIRST_SECONDS
        while True:
            try:
                index = 0
                async for line in client.logs(self.job_id, follow=True):
                    if index >= delivered:
                        await events.put(("line", pod, index, line))
                        delivered = index + 1
                    index += 1
                await events.put(("end", pod))
            except (ApiClientError, httpx.HTTPError):
                pass
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.poll_interval)
