"""The HTTP API (FastAPI): submit, read, wait, logs, cancel, acknowledge, explain, clusters.

Errors are precise: a bad task spec is a 422 listing every field at fault, an unknown job
a 404, a clash of idempotency keys a 409. A client mistake never yields a 5xx; a 503 with
``Retry-After`` means "not now" (not ready, or a cluster unreachable).

I/O: HTTP in, and whatever the dispatcher behind it does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Protocol

import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from dispatcher import __version__, metrics
from dispatcher.core import ClusterState, Snapshot, TaskSpec, parse_task_spec
from dispatcher.dispatching import Dispatcher
from dispatcher.errors import (
    ApiError,
    ClusterError,
    ClusterUnavailable,
    Conflict,
    DispatcherError,
    Fenced,
    InputError,
    NotFound,
    Problem,
)

API_PREFIX = "/v1"


class Runtime(Protocol):
    """What the API needs from the running service."""

    dispatcher: Dispatcher

    def ready(self) -> tuple[bool, str]: ...
    def healthy(self) -> tuple[bool, str]: ...
    def leading(self) -> bool: ...
    def snapshot(self) -> Snapshot: ...
    def api_tokens(self) -> tuple[str, ...]: ...


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


class ConditionModel(BaseModel):
    """Kubernetes-shaped: what the job waits for or went through (e.g. ClusterUnreachable)."""

    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str  # noqa: N815 - the Kubernetes field name (RFC 3339)


class JobModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str | None
    idempotency_key: str | None
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
    status: int, error: str, detail: str, problems: list[Problem] | None = None
) -> JSONResponse:
    body = ErrorModel(
        error=error,
        detail=detail,
        problems=[ProblemModel(field=p.field, message=p.message) for p in problems or []],
    )
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _task_from_body(body: Any) -> TaskSpec:
    if not isinstance(body, dict):
        raise InputError([Problem("", "the request body must be a JSON object (a task spec)")])
    return parse_task_spec(body)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError([Problem("", f"the request body is not valid JSON: {exc}")]) from None


def create_app(runtime: Runtime) -> FastAPI:  # noqa: PLR0915 - one route per statement
    app = FastAPI(
        title="kube-dispatcher",
        version=__version__,
        description="Routes batch tasks to the Kubernetes cluster that can run them.",
    )

    def authorize(request: Request) -> None:
        tokens = runtime.api_tokens()
        if not tokens:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in tokens:
            raise HTTPException(status_code=401, detail="a valid bearer token is required")

    def require_leader() -> None:
        if not runtime.leading():
            raise NotLeader

    async def bind_job(job_id: str) -> None:
        # Async, so the binding is in the context the (threaded) endpoint copies: every log
        # line written while serving this request names the job.
        structlog.contextvars.bind_contextvars(job_id=job_id)

    auth = [Depends(authorize)]
    jobs = [Depends(authorize), Depends(require_leader)]
    one_job = [*jobs, Depends(bind_job)]

    @app.middleware("http")
    async def fresh_log_context(request: Request, call_next: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        return await call_next(request)

    @app.exception_handler(NotLeader)
    def _not_leader(_: Request, exc: NotLeader) -> JSONResponse:
        return _error(503, "not_leader", "this replica is not the leader; retry")

    @app.exception_handler(Fenced)
    def _fenced(_: Request, exc: Fenced) -> JSONResponse:
        return _error(503, "not_leader", "this replica no longer holds the leader lease; retry")

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

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        # Fails when a supervised thread cannot go on: restarting the process is the cure.
        healthy, why = runtime.healthy()
        return PlainTextResponse(why, status_code=200 if healthy else 503)

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> PlainTextResponse:
        ready, why = runtime.ready()
        return PlainTextResponse(why, status_code=200 if ready else 503)

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
    async def submit(request: Request, response: Response) -> dict[str, Any]:
        """Submit a task. The same ``idempotency_key`` always yields the same job."""
        try:
            spec = _task_from_body(await _json_body(request))
        except InputError:
            metrics.SUBMISSIONS.labels(outcome="invalid").inc()
            raise
        view, created = await run_in_threadpool(runtime.dispatcher.submit, spec)
        response.status_code = 201 if created else 200
        return view

    @app.get(f"{API_PREFIX}/jobs", response_model=list[JobModel], dependencies=jobs)
    def list_jobs(
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
                return [runtime.dispatcher.find(idempotency_key)]
            except NotFound:
                return []
        return runtime.dispatcher.list(state=state, cluster=cluster, limit=limit)

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id}}",
        response_model=JobModel,
        responses={404: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def get_job(job_id: str) -> dict[str, Any]:
        return runtime.dispatcher.get(job_id)

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id}}/wait",
        response_model=JobModel,
        responses={404: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def wait_job(
        job_id: str, timeout: Annotated[float, Query(ge=0, le=300)] = 30.0
    ) -> dict[str, Any]:
        """Long poll: answers when the job has finished or after ``timeout`` seconds."""
        return runtime.dispatcher.wait(job_id, timeout)

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id}}/logs",
        responses={404: {"model": ErrorModel}, 409: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def job_logs(
        job_id: str,
        follow: bool = False,
        tail_lines: Annotated[int | None, Query(ge=1, le=100000)] = None,
    ) -> StreamingResponse:
        """The job's container log, as text; ``follow=true`` streams until the pod ends."""
        lines = runtime.dispatcher.logs(job_id, follow=follow, tail_lines=tail_lines)
        first = _peek(lines)
        return StreamingResponse(first, media_type="text/plain; charset=utf-8")

    @app.post(
        f"{API_PREFIX}/jobs/{{job_id}}/cancel",
        response_model=JobModel,
        responses={404: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def cancel_job(job_id: str) -> dict[str, Any]:
        return runtime.dispatcher.cancel(job_id)

    @app.post(
        f"{API_PREFIX}/jobs/{{job_id}}/acknowledge",
        status_code=204,
        responses={404: {"model": ErrorModel}, 409: {"model": ErrorModel}},
        dependencies=one_job,
    )
    def acknowledge_job(job_id: str) -> Response:
        """The client has read the outcome; the job and its record are forgotten."""
        runtime.dispatcher.acknowledge(job_id)
        return Response(status_code=204)

    @app.post(
        f"{API_PREFIX}/route",
        responses={422: {"model": ErrorModel}},
        dependencies=auth,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/TaskSpec"}}
                },
                "required": True,
            }
        },
    )
    async def explain(request: Request) -> dict[str, Any]:
        """Dry run: where the task would go and why every other cluster was passed over."""
        spec = _task_from_body(await _json_body(request))
        return runtime.dispatcher.explain(spec).to_dict()

    @app.get(f"{API_PREFIX}/clusters", response_model=list[ClusterModel], dependencies=auth)
    def clusters() -> list[dict[str, Any]]:
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


def _refusal_view(refusal: str) -> dict[str, str]:
    reason, _, message = refusal.partition(": ")
    return {"reason": reason, "message": message}


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
