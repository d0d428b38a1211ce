"""A small synchronous client of the dispatcher's HTTP API (httpx), for the CLI and Airflow.

Transient failures (connection errors, 502/503/504, 503 + ``Retry-After`` from a
replica that is not the leader, 429 + ``Retry-After`` to a caller with too many long polls
open) are retried with backoff; anything else raises
``ApiClientError`` carrying the server's status, message and field problems.

Every request carries ``Authorization: Bearer <token>``: a fixed token (a static token of
``service.auth.static_tokens``) or the content of a token file, read again whenever the
file changes (a projected ServiceAccount token for the dispatcher's audience, which the
kubelet rotates while a long task runs).

I/O: HTTP to one dispatcher; reads the token file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "ApiClientError",
    "BearerAuth",
    "DispatcherClient",
    "RotatingToken",
    "TokenSource",
    "error_from_response",
    "retry_after",
    "trace_context",
]

#: 429: this caller has too many long polls open (``service.max_waits_per_client``).
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ApiClientError(Exception):
    """The dispatcher refused a request (or could not be reached)."""

    def __init__(
        self, status: int | None, detail: str, problems: list[dict[str, str]] | None = None
    ):
        self.status = status
        self.detail = detail
        self.problems = problems or []
        listed = [f"  {p.get('field') or '(spec)'}: {p.get('message')}" for p in self.problems]
        # The service's detail may list the problems itself (a SpecError's text).
        lines = [detail] + [line for line in listed if line.strip() not in detail]
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class TokenSource:
    """The API token: given, or read from a file that may be rotated under us."""

    token: str | None = field(default=None, repr=False)
    path: str | None = None

    def read(self) -> str | None:
        if self.token:
            return self.token
        if not self.path:
            return None
        try:
            text = Path(self.path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            # The path is configuration, not a secret; the content never appears.
            raise ValueError(
                f"cannot read the dispatcher token file {self.path}: {exc.strerror}"
            ) from None
        return text or None

    def version(self) -> float | None:
        """Changes when the token file does (its mtime); ``None`` for a fixed token."""
        if self.token or not self.path:
            return None
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None


class RotatingToken:
    """The current token: read again when its file changes; thread-safe."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._version: float | None = None
        self._token: str | None = None
        self._read = False

    def get(self) -> str | None:
        version = self._source.version()
        with self._lock:
            if not self._read or version != self._version:
                self._token = self._source.read()
                self._version, self._read = version, True
            return self._token


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <current token>`` on every request."""

    def __init__(self, token: RotatingToken) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._token.get()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


def trace_context() -> dict[str, str]:
    """The current OpenTelemetry trace context as W3C Trace Context headers
    (``traceparent``), so a job's trace joins its submitter's (an Airflow task's span when
    Airflow traces): empty without the OpenTelemetry API or without a current span."""
    try:  # optional (the `tracing` extra; Airflow has it): imported only when used
        from opentelemetry import propagate  # noqa: PLC0415
    except ImportError:
        return {}
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


class DispatcherClient:
    """``token``: a fixed bearer token; ``token_file``: a file holding one (a projected
    ServiceAccount token), read again whenever it changes."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        token_file: str | None = None,
        verify: bool | str = True,
        timeout: float = 30.0,
        retries: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            auth=BearerAuth(RotatingToken(TokenSource(token=token, path=token_file))),
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )
        self._retries = retries
        self._sleep = sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DispatcherClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ----- plumbing ---------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delay = 0.5
        for attempt in range(self._retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self._retries:
                    raise ApiClientError(None, f"cannot reach the dispatcher: {exc}") from exc
                self._sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if response.status_code in _RETRY_STATUSES and attempt < self._retries:
                self._sleep(retry_after(response) or delay)
                delay = min(delay * 2, 10.0)
                continue
            if response.status_code >= 400:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    # ----- API ------------------------------------------------------------------------
    def submit(self, task: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Submit a task spec; returns (job, created). ``created`` is False for a
        re-submission of the same idempotency key."""
        response = self._request("POST", "/v1/jobs", json=task, headers=trace_context())
        return response.json(), response.status_code == 201

    def get(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/jobs/{job_id}").json())

    def find(self, idempotency_key: str) -> dict[str, Any] | None:
        jobs = self._request("GET", "/v1/jobs", params={"idempotency_key": idempotency_key}).json()
        return jobs[0] if jobs else None

    def jobs(self, *, state: str | None = None, cluster: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"state": state, "cluster": cluster}.items() if v}
        return list(self._request("GET", "/v1/jobs", params=params).json())

    def wait(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Long poll: the job once finished, or as it is after ``timeout`` seconds."""
        response = self._request(
            "GET",
            f"/v1/jobs/{job_id}/wait",
            params={"timeout": timeout},
            timeout=httpx.Timeout(timeout + 30.0, connect=10.0),
        )
        return dict(response.json())

    def logs(
        self, job_id: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> Iterator[str]:
        params: dict[str, Any] = {"follow": follow}
        if tail_lines:
            params["tail_lines"] = tail_lines
        with self._http.stream(
            "GET",
            f"/v1/jobs/{job_id}/logs",
            params=params,
            timeout=httpx.Timeout(None if follow else 60.0, connect=10.0),
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            yield from response.iter_lines()

    def xcom(self, job_id: str) -> Any:
        """What the succeeded job wrote to ``/airflow/xcom/return.json`` (``xcom_sidecar``)."""
        response = self._request(
            "GET", f"/v1/jobs/{job_id}/xcom", timeout=httpx.Timeout(120.0, connect=10.0)
        )
        return response.json()["value"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def acknowledge(self, job_id: str) -> None:
        self._request("POST", f"/v1/jobs/{job_id}/acknowledge")

    def explain(self, task: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", "/v1/route", json=task).json())

    def clusters(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/clusters").json())


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a 429's or 503's ``Retry-After`` asks for (at most 60), if it says."""
    value = response.headers.get("retry-after")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> ApiClientError:
    """The dispatcher's error answer as an exception (status, detail, field problems)."""
    try:
        body = response.json()
    except ValueError:
        return ApiClientError(response.status_code, response.text[:500] or response.reason_phrase)
    if isinstance(body, dict):
        return ApiClientError(
            response.status_code,
            str(body.get("detail") or body.get("error") or response.reason_phrase),
            list(body.get("problems") or []),
        )
    return ApiClientError(response.status_code, response.reason_phrase)
