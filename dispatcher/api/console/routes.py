"""The console's HTTP side: pages, sign-in, the live-update stream, the static files.

Authentication is the API's (``Runtime.authenticate``: static tokens or TokenReview). The
sign-in form takes a token, authenticates it exactly as an API request would, and keeps it
in an ``HttpOnly``, ``SameSite=Strict`` cookie scoped to ``/ui`` (``Secure`` unless
``service.console.secure_cookie`` is off); every later request is authenticated again from
the cookie (or an ``Authorization`` header), so a token that stops being valid ends the
session. A page without a valid sign-in redirects to the sign-in form; the stream and the
log tail answer 401. What a signed-in person sees follows the API's tenancy rules: their
tenant's jobs (others' when the tenant may read them), every cluster.

Every response carries a strict Content-Security-Policy (scripts, styles and images from
this origin only, no inline script, no framing). The only script is ``static/console.js``:
it opens ``/ui/events`` (Server-Sent Events) and swaps in the server-rendered fragments it
receives, so a job appears and changes state without a reload; the job page's log tail is
read again every few seconds while the job runs.

I/O: HTTP in; reads the dispatcher and the cache through the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from dispatcher.api.app import Runtime
from dispatcher.api.console import views
from dispatcher.api.waiting import Bound, LimitReached
from dispatcher.core.tenancy import Principal, may_read
from dispatcher.errors import (
    AccessError,
    ClusterError,
    Conflict,
    DispatcherError,
    Forbidden,
    InputError,
    NotFound,
)
from dispatcher.settings import ConsoleSettings

__all__ = ["COOKIE", "CSP", "ConsoleRuntime", "mount_console"]

PREFIX = "/ui"
#: The sign-in cookie (its value is the token the person signed in with).
COOKIE = "kd_console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: Seconds between keep-alive comments on an idle stream (proxies close silent ones).
_KEEP_ALIVE_SECONDS = 15.0
_HERE = Path(__file__).parent
_STATIC = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


class ConsoleRuntime(Runtime, Protocol):
    """What the console needs from the running service, beyond the API's ``Runtime``."""

    def cluster_status(self, cluster: str) -> str:
        """Why ``cluster`` is not up, in words ('' when it is)."""
        ...

    def credential_expiry(self, cluster: str) -> float | None:
        """Unix time the cluster's current credential expires (``None``: not known)."""
        ...


class _Subscriber:
    """One open stream: the ids of jobs changed since it last looked, set from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: set[str] = set()
        self._event = asyncio.Event()

    def notify(self, job_id: str) -> None:
        # Never blocks the dispatcher's thread; a closed loop has nobody left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._add, job_id)

    def _add(self, job_id: str) -> None:
        self._pending.add(job_id)
        self._event.set()

    async def changed(self, timeout: float) -> set[str]:
        """The jobs changed since the last call (empty after ``timeout`` without any)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()
        changed, self._pending = self._pending, set()
        return changed


class _Broadcast:
    """Job changes (the dispatcher's listener) to every open stream. A stream's backlog is
    a set of job ids, so it holds at most one entry per job however slow its reader."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()

    def changed(self, job_id: str) -> None:
        with self._lock:
            subscribers = tuple(self._subscribers)
        for subscriber in subscribers:
            subscriber.notify(job_id)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[_Subscriber]:
        subscriber = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            with self._lock:
                self._subscribers.discard(subscriber)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = views.when
    return env


def _secured(response: Response) -> Response:
    response.headers.update(_HEADERS)
    return response


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of this origin only (no open redirect)."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/jobs"


def mount_console(
    app: FastAPI,
    runtime: ConsoleRuntime,
    settings: ConsoleSettings,
    *,
    queue: views.QueueSource | None = None,
) -> None:
    """Serve the console under ``/ui`` of ``app``; ``queue`` is where the queue page's
    entries come from (``None``: ``views.RoutingQueue``, the dispatcher's own queue)."""
    console = _Console(runtime, settings, queue or views.RoutingQueue(runtime.dispatcher))
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    for path, endpoint, method in (
        ("", console.home, "GET"),
        ("/", console.home, "GET"),
        ("/sign-in", console.sign_in_form, "GET"),
        ("/sign-in", console.sign_in, "POST"),
        ("/sign-out", console.sign_out, "POST"),
        ("/jobs", console.jobs_page, "GET"),
        ("/jobs/{job_id}", console.job_page, "GET"),
        ("/jobs/{job_id}/log", console.job_log, "GET"),
        ("/clusters", console.clusters_page, "GET"),
        ("/queue", console.queue_page, "GET"),
        ("/events", console.events, "GET"),
        ("/static/{name}", console.static_file, "GET"),
    ):
        router.add_api_route(path, endpoint, methods=[method])
    app.include_router(router)


class _Console:
    """The console's endpoints over one runtime."""

    def __init__(
        self, runtime: ConsoleRuntime, settings: ConsoleSettings, source: views.QueueSource
    ) -> None:
        self._env = _templates()
        self._runtime = runtime
        self._dispatcher = runtime.dispatcher
        self._settings = settings
        self._source = source
        self._broadcast = _Broadcast()
        self._dispatcher.listen(self._broadcast.changed)
        self._streams = Bound(
            "events",
            settings.max_streams_per_client,
            "service.console.max_streams_per_client",
            per_client=True,
        )
        self._all_streams = Bound(
            "events", settings.max_streams, "service.console.max_streams", per_client=False
        )
        self._static = {name: (_HERE / "static" / name).read_bytes() for name in _STATIC}

    # ------------------------------------------------------------------ helpers
    def _page(
        self, template: str, principal: Principal | None, status: int = 200, **context: Any
    ) -> Response:
        html = self._env.get_template(template).render(
            principal=principal,
            signed_in=principal is not None and principal.policy is not None,
            events=context.pop("events", None),
            **context,
        )
        return _secured(HTMLResponse(html, status_code=status))

    async def _authenticated(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is None and COOKIE in request.cookies:
            header = f"Bearer {request.cookies[COOKIE]}"
        # In a worker thread: the authentication may ask the API server (TokenReview).
        return await run_in_threadpool(self._runtime.authenticate, header)

    async def _signed_in(self, request: Request) -> Principal | Response:
        """The caller, or the response that refuses them (the sign-in form, or 403)."""
        try:
            return await self._authenticated(request)
        except Forbidden as exc:
            return self._page("error.html", None, 403, title="Not allowed", detail=str(exc))
        except AccessError:
            target = urlencode({"next": request.url.path + _query(request)})
            return _secured(RedirectResponse(f"{PREFIX}/sign-in?{target}", status_code=303))

    def _unavailable(self, principal: Principal, exc: DispatcherError) -> Response:
        if not self._runtime.leading():
            detail = "this replica is not the leader: jobs are shown by the leader only"
        else:
            detail = str(exc)
        return self._page("error.html", principal, 503, title="Jobs unavailable", detail=detail)

    def _with_dag(self, job: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return {**job, "dag": views.dag_of(self._dispatcher.spec(job["id"]))}
        except NotFound:
            return None  # acknowledged meanwhile

    def _readable(self, principal: Principal, job_id: str) -> dict[str, Any]:
        job = self._dispatcher.get(job_id)
        row = self._with_dag(job) if may_read(principal, job.get("tenant")) else None
        if row is None:
            raise NotFound(f"no job {job_id}", job_id=job_id)
        return row

    # ------------------------------------------------------------------ sign-in
    def home(self) -> Response:
        return _secured(RedirectResponse(f"{PREFIX}/jobs", status_code=303))

    def sign_in_form(self, next: str | None = None) -> Response:
        return self._page("sign_in.html", None, next=_safe_next(next), error=None)

    async def sign_in(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or [""])[0])
        try:
            await run_in_threadpool(self._runtime.authenticate, f"Bearer {token}")
        except AccessError as exc:
            return self._page("sign_in.html", None, 401, next=target, error=str(exc))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=self._settings.session_seconds,
            path=PREFIX,
            secure=self._settings.secure_cookie,
            httponly=True,
            samesite="strict",
        )
        return _secured(response)

    def sign_out(self) -> Response:
        response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        response.delete_cookie(
            COOKIE,
            path=PREFIX,
            secure=self._settings.secure_cookie,
            httponly=True,
            samesite="strict",
        )
        return _secured(response)

    # ------------------------------------------------------------------ jobs
    def _job_rows(
        self, principal: Principal, wanted: views.JobFilter
    ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        jobs = self._dispatcher.list(
            limit=100_000, visible=lambda owner: may_read(principal, owner)
        )
        rows: list[dict[str, Any]] = []
        choices: dict[str, set[str]] = {"tenant": set(), "dag": set(), "cluster": set()}
        for job in reversed(jobs):  # newest first
            row = self._with_dag(job)
            if row is None:
                continue
            for name, values in choices.items():
                if row.get(name):
                    values.add(row[name])
            if wanted.matches(row, row["dag"]) and len(rows) < self._settings.max_jobs:
                rows.append(row)
        choices["cluster"].update(s.name for s in self._runtime.snapshot().clusters)
        return rows, {name: sorted(values) for name, values in choices.items()}

    async def jobs_page(
        self,
        request: Request,
        *,
        state: str | None = None,
        cluster: str | None = None,
        tenant: str | None = None,
        dag: str | None = None,
    ) -> Response:
        principal = await self._signed_in(request)
        if isinstance(principal, Response):
            return principal
        try:
            wanted = views.job_filter(state, cluster, tenant, dag)
        except InputError as exc:
            return self._page("error.html", principal, 422, title="Bad filter", detail=str(exc))
        try:
            rows, choices = await run_in_threadpool(self._job_rows, principal, wanted)
        except DispatcherError as exc:
            return self._unavailable(principal, exc)
        return self._page(
            "jobs.html",
            principal,
            jobs=rows,
            choices=choices,
            states=views.STATES,
            wanted=wanted,
            events=f"{PREFIX}/events?" + urlencode(wanted.query()),
        )

    def _detail(self, principal: Principal, job_id: str) -> dict[str, Any]:
        job = self._readable(principal, job_id)
        return {"job": job, "explanation": views.explain_job(self._dispatcher, job)}

    async def job_page(self, request: Request, job_id: str) -> Response:
        principal = await self._signed_in(request)
        if isinstance(principal, Response):
            return principal
        try:
            context = await run_in_threadpool(self._detail, principal, job_id)
        except NotFound:
            return self._page("error.html", principal, 404, title="No such job", detail=job_id)
        except DispatcherError as exc:
            return self._unavailable(principal, exc)
        events = f"{PREFIX}/events?" + urlencode({"job": job_id})
        return self._page("job.html", principal, events=events, **context)

    def _log_tail(self, principal: Principal, job_id: str) -> str:
        self._readable(principal, job_id)
        try:
            lines = self._dispatcher.logs(job_id, tail_lines=self._settings.log_tail_lines)
        except Conflict:
            return "(no pod yet)\n"
        try:
            return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        finally:
            lines.close()

    async def job_log(self, request: Request, job_id: str) -> Response:
        """The last lines of the job's container log, as text (the job page reads it)."""
        try:
            principal = await self._authenticated(request)
            text = await run_in_threadpool(self._log_tail, principal, job_id)
        except AccessError as exc:
            return _secured(PlainTextResponse(str(exc), status_code=401))
        except NotFound:
            return _secured(PlainTextResponse(f"no job {job_id}", status_code=404))
        except ClusterError as exc:
            # The page shows why, in place of the log (the pod is gone, its cluster down).
            text = f"(the log cannot be read now: {exc})\n"
        except DispatcherError as exc:
            return _secured(PlainTextResponse(str(exc), status_code=503))
        return _secured(PlainTextResponse(text))

    # ------------------------------------------------------------------ clusters, queue
    def _cluster_rows(self) -> list[views.ClusterRow]:
        snapshot = self._runtime.snapshot()
        try:
            entries = self._source.entries(lambda _: True, limit=100_000)
        except DispatcherError:
            entries = []  # not the leader: no queue; the clusters still show
        health = {state.name: state.health.value for state in snapshot.clusters}

        def status(name: str) -> tuple[str, str]:
            why = self._runtime.cluster_status(name)
            if not why and health[name] != "up":
                # The cache reports a cluster down until its first list is in.
                why = "its nodes and pods are not listed yet"
            return health[name], why

        return views.cluster_rows(
            snapshot, status, self._runtime.credential_expiry, views.queue_per_pool(entries)
        )

    async def clusters_page(self, request: Request) -> Response:
        principal = await self._signed_in(request)
        if isinstance(principal, Response):
            return principal
        rows = await run_in_threadpool(self._cluster_rows)
        return self._page("clusters.html", principal, clusters=rows, now=views.now())

    async def queue_page(self, request: Request) -> Response:
        principal = await self._signed_in(request)
        if isinstance(principal, Response):
            return principal
        try:
            entries = await run_in_threadpool(
                self._source.entries,
                lambda owner: may_read(principal, owner),
                self._settings.max_jobs,
            )
        except DispatcherError as exc:
            return self._unavailable(principal, exc)
        return self._page("queue.html", principal, entries=entries)

    # ------------------------------------------------------------------ live updates
    def _change(
        self, principal: Principal, job_id: str, one: str | None, wanted: views.JobFilter
    ) -> str | None:
        """The event to send about ``job_id`` (``None``: nothing for this stream)."""
        if one is not None:
            if job_id != one:
                return None
            try:
                context = self._detail(principal, job_id)
            except NotFound:
                return None
            html = self._env.get_template("_job_live.html").render(**context)
            return _event("detail", {"id": job_id, "state": context["job"]["state"], "html": html})
        try:
            row = self._readable(principal, job_id)
        except NotFound:
            return _event("remove", {"id": job_id})
        if not wanted.matches(row, row["dag"]):
            return _event("remove", {"id": job_id})
        html = self._env.get_template("_job_row.html").render(job=row)
        return _event("row", {"id": job_id, "html": html})

    async def events(
        self,
        request: Request,
        *,
        job: str | None = None,
        state: str | None = None,
        cluster: str | None = None,
        tenant: str | None = None,
        dag: str | None = None,
    ) -> Response:
        """Server-Sent Events: ``row``/``remove`` for the jobs list (with its filters),
        ``detail`` for one job's page (``job``)."""
        try:
            principal = await self._authenticated(request)
            wanted = views.job_filter(state, cluster, tenant, dag)
            slots = [self._streams.take(principal.identity)]
        except AccessError as exc:
            return _secured(PlainTextResponse(str(exc), status_code=401))
        except InputError as exc:
            return _secured(PlainTextResponse(str(exc), status_code=422))
        except LimitReached as exc:
            return _secured(PlainTextResponse(str(exc), status_code=429))
        try:
            slots.append(self._all_streams.take())
        except LimitReached as exc:
            slots[0].release()
            return _secured(PlainTextResponse(str(exc), status_code=503))

        async def stream() -> AsyncIterator[str]:
            try:
                with self._broadcast.subscribe() as subscriber:
                    yield "retry: 3000\n\n"
                    while True:
                        changed = await subscriber.changed(_KEEP_ALIVE_SECONDS)
                        if not changed:
                            yield ": keep-alive\n\n"
                        for job_id in sorted(changed):
                            sent = await run_in_threadpool(
                                self._change, principal, job_id, job, wanted
                            )
                            if sent is not None:
                                yield sent
            finally:
                for slot in slots:
                    slot.release()

        response = StreamingResponse(stream(), media_type="text/event-stream")
        response.headers["X-Accel-Buffering"] = "no"
        return _secured(response)

    def static_file(self, name: str) -> Response:
        if name not in self._static:
            return _secured(PlainTextResponse("not found", status_code=404))
        response = _secured(Response(self._static[name], media_type=_STATIC[name]))
        response.headers["Cache-Control"] = "public, max-age=300"
        return response


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _event(name: str, data: dict[str, Any]) -> str:
    # One ``data:`` line: JSON escapes newlines, so the payload cannot end the event early.
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
