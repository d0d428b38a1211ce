"""The HTTP API (FastAPI): submit, read, wait, logs, cancel, acknowledge, explain, clusters.

Errors are precise: a bad task spec is a 422 listing every field at fault, an unknown job
a 404, a clash of idempotency keys a 409. A client mistake never yields a 5xx; a 503 with
``Retry-After`` means "not now" (not ready, or a cluster unreachable).

Every ``/v1`` request is authenticated (``Runtime.authenticate``: 401 without a valid
token) and authorized for its tenant: a task asking for more than the tenant may have is a
403 naming each refusal and the setting that allows it; another tenant's job is a 404
(unless the caller is an administrator, or may read others' jobs and only reads). Bodies
over ``max_body_bytes`` are a 413, JSON deeper than ``max_json_depth`` a 422.

Long polls and log follows hold none of the worker threads the other endpoints run on
(``dispatcher.api.waiting``), and ``/healthz`` and ``/readyz`` run on the event loop, so
waiting clients can never starve the probes or the short requests. Each caller may have
``max_waits_per_client`` long polls and ``max_log_follows_per_client`` follows open (429
with ``Retry-After`` beyond), the replica ``max_log_follows`` follows in all (503).

I/O: HTTP in, and whatever the dispatcher behind it does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Protocol

import anyio
import structlog
from anyio import CapacityLimiter
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from dispatcher import __version__, metrics
from dispatcher.api.limits import BodyLimit, json_depth_problem
from dispatcher.api.waiting import Bound, JobChanges, LimitReached, read_line
from dispatcher.core import ClusterState, Snapshot, TaskSpec, parse_task_spec
from dispatcher.core.snapshot import ClusterRefusal
from dispatcher.core.tenancy import Principal, authorize, may_manage, may_read
from dispatcher.dispatching import Dispatcher, JobState
from dispatcher.dispatching.ports import LogStream
from dispatcher.errors import (
    ApiError,
    ClusterError,
    ClusterUnavailable,
    Conflict,
    DispatcherError,
    Fenced,
    Forbidden,
    InputError,
    NotFound,
    Problem,
    Unauthenticated,
)

API_PREFIX = "/v1"
#: Seconds a client is asked to wait before trying again (429 and 503).
RETRY_AFTER_SECONDS = 5


class Runtime(Protocol):
    """What the API needs from the running service."""

    dispatcher: Dispatcher

    def ready(self) -> tuple[bool, str]: ...
    def healthy(self) -> tuple[bool, str]: ...
    def leading(self) -> bool: ...
    def snapshot(self) -> Snapshot: ...
    def authenticate(self, authorization: str | None) -> Principal: ...


class NotLeader(Exception):
    """This replica does not hold the lease: job operations go to the leader."""


class ProblemModel(BaseModel):
    field: str
    message: str


class ErrorModel(BaseModel):
    error: str
    detail: str
    problems: list[ProblemModel] = Field(default_factory=list)


class AttemptModel(BaseModel):
    number: int
    cluster: str
    pod: str
    namespace: str
    created_at: float
    uid: str | None = None
    ended: str | None = None
    #: Abandoned on an unreachable cluster (relaunch policy): its pod may have run on.
    abandoned: bool = False
    #: What the dispatcher copied to the cluster before the pod (names only).
    materialised: list[str] = Field(default_factory=list)


class ConditionModel(BaseModel):
    """Kubernetes-shaped: what the job waits for or went through (e.g. ClusterUnreachable)."""

    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str  # noqa: N815 - the Kubernetes field name (RFC 3339)


class ReservationModel(BaseModel):
    cluster: str
    node: str
    #: When the job is expected to fit there (epoch seconds); ``None``: unknown.
    eta: float | None


class QueueModel(BaseModel):
    """Where a waiting job stands at the last dispatch cycle."""

    ahead: int
    ahead_in_tenant: int
    tenant: str
    pool: str
    ahead_in_pool: int
    waiting_for: str
    reservation: ReservationModel | None
    expected_start: float | None
    #: ``16 a100 GPUs on one node; largest free block 6; 2 tasks ahead in your tenant...``
    message: str


class JobModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str | None
    idempotency_key: str | None
    #: The submitter's tenant (``None``: submitted to a service without authentication).
    tenant: str | None = None
    state: str
    cluster: str | None
    namespace: str | None
    pod: str | None
    attempts: int
    history: list[AttemptModel]
    reason: str
    failure: str | None
    message: str
    exit_code: int | None
    result: Any = None
    conditions: list[ConditionModel] = Field(default_factory=list)
    submitted_at: float
    scheduled_at: float | None
    running_at: float | None
    finished_at: float | None
    priority: int
    #: Where a queued job stands (docs/fair-share.md); ``None`` when it does not wait.
    queue: QueueModel | None = None


class GpuModel(BaseModel):
    model: str
    allocatable: int
    free: int


class RefusalModel(BaseModel):
    #: A ``dispatcher.errors.RefusalReason`` value (``server-mismatch``, ``exec-plugin``...).
    reason: str
    message: str


class ClusterModel(BaseModel):
    name: str
    role: str
    health: str
    #: Why our rules refuse the cluster's credentials (``health: refused`` only).
    refusal: RefusalModel | None = None
    labels: dict[str, str]
    nodes: int
    cpu_allocatable: float
    cpu_free: float
    memory_allocatable_bytes: int
    memory_free_bytes: int
    gpus: list[GpuModel]


def _error(
    status: int,
    error: str,
    detail: str,
    problems: list[Problem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorModel(
        error=error,
        detail=detail,
        problems=[ProblemModel(field=p.field, message=p.message) for p in problems or []],
    )
    if status in (429, 503):
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_SECONDS)}
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _task_from_body(body: Any) -> TaskSpec:
    if not isinstance(body, dict):
        raise InputError([Problem("", "the request body must be a JSON object (a task spec)")])
    return parse_task_spec(body)


async def _json_body(request: Request, max_depth: int) -> Any:
    raw = await request.body()
    deep = json_depth_problem(raw, max_depth)
    if deep is not None:
        raise InputError([Problem("", deep)])
    try:
        return json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError([Problem("", f"the request body is not valid JSON: {exc}")]) from None
    except RecursionError:
        raise InputError([Problem("", "the request body is nested too deeply")]) from None


async def _caller(request: Request) -> Principal:
    """Who sent the request (``Runtime.authenticate``); bound to its log context."""
    # In a worker thread: the authentication may ask the in-plane API server (TokenReview).
    runtime: Runtime = request.app.state.runtime
    principal = await run_in_threadpool(runtime.authenticate, request.headers.get("authorization"))
    structlog.contextvars.bind_contextvars(caller=principal.identity)
    return principal


Caller = Annotated[Principal, Depends(_caller)]


def create_app(  # noqa: PLR0915 - one route per statement
    runtime: Runtime,
    *,
    max_body_bytes: int = 1024 * 1024,
    max_json_depth: int = 64,
    max_waits_per_client: int = 1000,
    max_log_follows_per_client: int = 100,
    max_log_follows: int = 200,
    metrics_route: bool = True,
) -> FastAPI:
    """The API; ``metrics_route`` False when ``/metrics`` has a port of its own. The
    limits are the ``service`` settings of the same names."""
    app = FastAPI(
        title="kube-dispatcher",
        version=__version__,
        description="Routes batch tasks to the Kubernetes cluster that can run them.",
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.runtime = runtime
    changes = JobChanges()
    runtime.dispatcher.listen(changes.changed)
    waits = Bound("wait", max_waits_per_client, "service.max_waits_per_client", per_client=True)
    client_follows = Bound(
        "follow", max_log_follows_per_client, "service.max_log_follows_per_client", per_client=True
    )
    replica_follows = Bound("follow", max_log_follows, "service.max_log_follows", per_client=False)
    # The follows' own threads: never the default pool's, which the other endpoints use.
    follow_threads = CapacityLimiter(max_log_follows)

    async def require_leader() -> None:
        # On the event loop: reads the last renewal the election thread published.
        if not runtime.leading():
            raise NotLeader

    def readable(principal: Principal, job_id: str) -> dict[str, Any]:
        """The job, if ``principal`` may see it; otherwise it does not exist for them."""
        job = runtime.dispatcher.get(job_id)
        if not may_read(principal, job.get("tenant")):
            raise NotFound(f"no job {job_id}", job_id=job_id)
        return job

    def manageable(principal: Principal, job_id: str) -> None:
        if principal.admin:
            return
        job = readable(principal, job_id)
        if not may_manage(principal, job.get("tenant")):
            raise Forbidden(
                [
                    Problem(
                        "",
                        f"job {job_id} belongs to tenant {job.get('tenant')!r}: tenant "
                        f"{principal.tenant!r} may read it (tenants.{principal.tenant}"
                        ".read_others) but only its own tenant or an admin "
                        "(role: admin) may cancel or acknowledge it",
                    )
                ],
                tenant=principal.tenant,
            )

    def authorized_task(principal: Principal, spec: TaskSpec) -> None:
        if principal.policy is None or principal.tenant is None:
            return
        problems = authorize(spec, principal.tenant, principal.policy)
        if problems:
            raise Forbidden(problems, tenant=principal.tenant)

    async def bind_job(job_id: str) -> None:
        # Async, so the binding is in the context the (threaded) endpoint copies: every log
        # line written while serving this request names the job.
        structlog.contextvars.bind_contextvars(job_id=job_id)

    # The caller first: an unauthenticated request is a 401 on every replica. FastAPI
    # resolves ``caller`` once per request; the endpoints' ``Caller`` gets the same one.
    jobs = [Depends(_caller), Depends(require_leader)]
    one_job = [*jobs, Depends(bind_job)]

    @app.middleware("http")
    async def fresh_log_context(request: Request, call_next: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        return await call_next(request)

    @app.exception_handler(LimitReached)
    def _limit(_: Request, exc: LimitReached) -> JSONResponse:
        if exc.per_client:
            return _error(429, "too_many_requests", str(exc))
        return _error(503, "busy", str(exc))

    @app.exception_handler(NotLeader)
    def _not_leader(_: Request, exc: NotLeader) -> JSONResponse:
        return _error(503, "not_leader", "this replica is not the leader; retry")

    @app.exception_handler(Fenced)
    def _fenced(_: Request, exc: Fenced) -> JSONResponse:
        return _error(503, "not_leader", "this replica no longer holds the leader lease; retry")

    @app.exception_handler(Unauthenticated)
    def _unauthenticated(_: Request, exc: Unauthenticated) -> JSONResponse:
        return _error(401, "unauthenticated", str(exc), headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return _error(403, "forbidden", str(exc), list(exc.problems))

    @app.exception_handler(InputError)
    def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return _error(422, "invalid", str(exc), list(exc.problems))

    @app.exception_handler(NotFound)
    def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, "not_found", str(exc))

    @app.exception_handler(Conflict)
    def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return _error(409, "conflict", str(exc))

    @app.exception_handler(ClusterError)
    def _cluster(_: Request, exc: ClusterError) -> JSONResponse:
        if isinstance(exc, ApiError) and exc.status == 404:
            # The pod is gone (cleaned up or deleted): its logs went with it.
            return _error(404, "pod_gone", f"the job's pod no longer exists: {exc}")
        return _error(503, "cluster_unavailable", str(exc))

    @app.exception_handler(DispatcherError)
    def _dispatcher(_: Request, exc: DispatcherError) -> JSONResponse:
        return _error(503, "unavailable", str(exc))

    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            Problem(
                ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")),
                e.get("msg", ""),
            )
            for e in exc.errors()
        ]
        return _error(422, "invalid", "the request is invalid", problems)

    # The probes run on the event loop, never waiting for a worker thread: what they read
    # (the supervisor's thread states, the service's start-up flags) is behind locks held
    # only for a few field reads, never across I/O.
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        # Fails when a supervised thread cannot go on: restarting the process is the cure.
        healthy, why = runtime.healthy()
        return PlainTextResponse(why, status_code=200 if healthy else 503)

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> PlainTextResponse:
        ready, why = runtime.ready()
        return PlainTextResponse(why, status_code=200 if ready else 503)

    if metrics_route:

        @app.get("/metrics", include_in_schema=False)
        def prometheus() -> Response:
            return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        f"{API_PREFIX}/jobs",
        status_code=201,
        response_model=JobModel,
        responses={
            200: {
                "model": JobModel,
                "description": "the same idempotency key was submitted before",
            },
            409: {"model": ErrorModel},
            422: {"model": ErrorModel},
        },
        dependencies=jobs,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/TaskSpec"}}
                },
                "required": True,
            }
        },
    )
    async def submit(request: Request, response: Response, principal: Caller) -> dict[str, Any]:
        """Submit a task. The same ``idempotency_key`` always yields the same job."""
        try:
            spec = _task_from_body(await _json_body(request, max_json_depth))
        except InputError:
            metrics.SUBMISSIONS.labels(outcome="invalid").inc()
            raise
        try:
            authorized_task(principal, spec)
        except Forbidden:
            metrics.SUBMISSIONS.labels(outcome="forbidden").inc()
            raise
        view, created = await run_in_threadpool(
            runtime.dispatcher.submit,
            spec,
            principal.tenant,
            # The caller's trace (W3C Trace Context), which the job's trace joins.
            request.headers.get("traceparent"),
        )
        response.status_code = 201 if created else 200
        return view

    @app.get(f"{API_PREFIX}/jobs", response_model=list[JobModel], dependencies=jobs)
    def list_jobs(
        principal: Caller,
        state: Annotated[
            str | None,
            Query(
                pattern="^(queued|launching|pending|running|cancelling|moving|succeeded"
                "|failed|cancelled|rejected)$"
            ),
        ] = None,
        cluster: Annotated[str | None, Query(max_length=63)] = None,
        idempotency_key: Annotated[str | None, Query(max_length=512)] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[dict[str, Any]]:
        if idempotency_key is not None:
            try:
                return [runtime.dispatcher.find(idempotency_key, principal.tenant)]
            except NotFound:
                return []
        return runtime.dispatcher.list(
            state=state,
            cluster=cluster,
            limit=limit,
            visible=lambda owner: may_read(principal, owner),
        )

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id}}",
        response_model=JobModel,
        responses={404: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def get_job(job_id: str, principal: Caller) -> dict[str, Any]:
        return readable(principal, job_id)

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id}}/wait",
        response_model=JobModel,
        responses={404: {"model": ErrorModel}},
        dependencies=one_job,
    )
    async def wait_job(
        job_id: str, principal: Caller, timeout: Annotated[float, Query(ge=0, le=300)] = 30.0
    ) -> dict[str, Any]:
        """Long poll: answers when the job has finished or after ``timeout`` seconds."""
        # Awaits the job's changes on the event loop: no thread is held while it waits.
        # Reading a job takes the job table's lock for a dictionary lookup only.
        slot = waits.take(principal.identity)
        metrics.API_LONG_REQUESTS.labels(kind="wait").inc()
        try:
            with changes.watching(job_id) as waiter:
                deadline = anyio.current_time() + timeout
                job = readable(principal, job_id)
                while not JobState(job["state"]).finished:
                    remaining = deadline - anyio.current_time()
                    if remaining <= 0:
                        break
                    await waiter.changed(remaining)
                    try:
                        job = readable(principal, job_id)
                    except NotFound:
                        break  # acknowledged or expired meanwhile: as last seen
                return job
        finally:
            metrics.API_LONG_REQUESTS.labels(kind="wait").dec()
            slot.release()

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id}}/logs",
        responses={404: {"model": ErrorModel}, 409: {"model": ErrorModel}},
        dependencies=one_job,
    )
    async def job_logs(
        job_id: str,
        principal: Caller,
        follow: bool = False,
        tail_lines: Annotated[int | None, Query(ge=1, le=100000)] = None,
    ) -> StreamingResponse:
        """The job's container log, as text; ``follow=true`` streams until the pod ends."""
        readable(principal, job_id)
        if not follow:
            # A bounded read: on the worker threads, like every short request.
            def start() -> Iterator[str]:
                return _peek(runtime.dispatcher.logs(job_id, tail_lines=tail_lines))

            first = await run_in_threadpool(start)
            return StreamingResponse(first, media_type="text/plain; charset=utf-8")
        slots = [client_follows.take(principal.identity)]
        try:
            slots.append(replica_follows.take())
            lines = await anyio.to_thread.run_sync(
                lambda: runtime.dispatcher.logs(job_id, follow=True, tail_lines=tail_lines),
                limiter=follow_threads,
            )
        except BaseException:
            for slot in slots:
                slot.release()
            raise

        def finished() -> None:
            lines.close()
            for slot in slots:
                slot.release()

        return _Following(_followed(lines, follow_threads), finished)

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id}}/xcom",
        responses={404: {"model": ErrorModel}, 409: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def job_xcom(job_id: str, principal: Caller) -> dict[str, Any]:
        """``{"value": ...}``: what a succeeded job with ``xcom_sidecar`` wrote to
        ``/airflow/xcom/return.json`` (``null`` if nothing); read before acknowledging."""
        readable(principal, job_id)
        return {"value": runtime.dispatcher.xcom(job_id)}

    @app.post(
        f"{API_PREFIX}/jobs/{{job_id}}/cancel",
        response_model=JobModel,
        responses={404: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def cancel_job(job_id: str, principal: Caller) -> dict[str, Any]:
        manageable(principal, job_id)
        return runtime.dispatcher.cancel(job_id)

    @app.post(
        f"{API_PREFIX}/jobs/{{job_id}}/acknowledge",
        status_code=204,
        responses={404: {"model": ErrorModel}, 409: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def acknowledge_job(job_id: str, principal: Caller) -> Response:
        """The client has read the outcome; the job and its record are forgotten."""
        manageable(principal, job_id)
        runtime.dispatcher.acknowledge(job_id)
        return Response(status_code=204)

    @app.post(
        f"{API_PREFIX}/route",
        responses={422: {"model": ErrorModel}},
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/TaskSpec"}}
                },
                "required": True,
            }
        },
    )
    async def explain(request: Request, principal: Caller) -> dict[str, Any]:
        """Dry run: where the task would go and why every other cluster was passed over."""
        spec = _task_from_body(await _json_body(request, max_json_depth))
        authorized_task(principal, spec)
        return runtime.dispatcher.explain(spec, principal.tenant).to_dict()

    @app.get(f"{API_PREFIX}/clusters", response_model=list[ClusterModel])
    def clusters(principal: Caller) -> list[dict[str, Any]]:
        return [cluster_view(state) for state in runtime.snapshot().clusters]

    # The task spec's schema, referenced by the raw-body endpoints above (their bodies are
    # parsed by the core, which lists every problem at once).
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original_openapi()
        task_schema = TaskSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        definitions = task_schema.pop("$defs", {})
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(definitions)
        components["TaskSpec"] = task_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _refusal_view(refusal: ClusterRefusal) -> dict[str, str]:
    return {"reason": refusal.reason.value, "message": refusal.message}


def cluster_view(state: ClusterState) -> dict[str, Any]:
    """One cluster as ``GET /v1/clusters`` shows it."""
    capacity = state.capacity()
    return {
        "name": state.name,
        "role": state.info.role.value,
        "health": state.health.value,
        "refusal": _refusal_view(state.refusal) if state.refusal else None,
        "labels": dict(state.info.labels),
        "nodes": state.node_count,
        "cpu_allocatable": capacity.cpu_millicores[0] / 1000,
        "cpu_free": capacity.cpu_millicores[1] / 1000,
        "memory_allocatable_bytes": capacity.memory_bytes[0],
        "memory_free_bytes": capacity.memory_bytes[1],
        "gpus": [
            {"model": model, "allocatable": alloc, "free": free}
            for model, (alloc, free) in capacity.gpus.items()
        ],
    }


class _Following(StreamingResponse):
    """A followed log: ``finished`` runs however the response ends (the pod's log ended,
    the client went away, the stream broke), after its last read returned."""

    def __init__(self, content: AsyncIterator[str], finished: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/plain; charset=utf-8")
        self._finished = finished

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.API_LONG_REQUESTS.labels(kind="follow").inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            metrics.API_LONG_REQUESTS.labels(kind="follow").dec()
            self._finished()


async def _followed(lines: LogStream, limiter: CapacityLimiter) -> AsyncIterator[str]:
    while True:
        # A broken stream raises (the client sees it cut, never a log that looks whole).
        line = await read_line(lines, limiter)
        if line is None:
            return
        yield _line(line)


def _peek(lines: Iterator[str]) -> Iterator[str]:
    """Start the log stream before answering, so an unreachable cluster is a 503, not a
    broken 200."""
    try:
        first = next(lines)
    except StopIteration:
        return iter(())
    except ClusterError:
        raise
    except OSError as exc:
        raise ClusterUnavailable(f"log stream failed: {exc}", cluster="?") from exc

    def chain() -> Iterator[str]:
        yield _line(first)
        for line in lines:
            yield _line(line)

    return chain()


def _line(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
