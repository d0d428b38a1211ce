"""A scripted stand-in for the dispatcher's HTTP API (httpx mock transports), for testing
the operator and the trigger without the stack.

A ``FakeDispatcher`` holds one job that moves through the given states, one state per
``wait``/``get`` answer after the first; its log is served in full on every read, and a
read may be cut short after a few lines to imitate a dropped connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx

BASE = "http://dispatcher.test"


def job_view(state: str, **extra: Any) -> dict[str, Any]:
    placed = state not in ("queued", "rejected")
    job: dict[str, Any] = {
        "id": "j1",
        "name": "train",
        "idempotency_key": "k",
        "state": state,
        "cluster": "gpu-a100" if placed else None,
        "namespace": "batch" if placed else None,
        "pod": "train-abc-1" if placed else None,
        "attempts": 1 if placed else 0,
        "history": [],
        "reason": "placed on gpu-a100 on 8x NVIDIA-A100",
        "failure": None,
        "message": "",
        "exit_code": None,
        "result": None,
        "submitted_at": 100.0,
        "scheduled_at": 101.0 if placed else None,
        "running_at": 102.0 if state not in ("queued", "pending", "rejected") else None,
        "finished_at": None,
        "priority": 0,
    }
    if state in ("succeeded", "failed", "cancelled", "rejected"):
        job["finished_at"] = 294.0
    job.update(extra)
    return job


@dataclass
class FakeDispatcher:
    states: list[dict[str, Any]]
    log: list[str] = field(default_factory=lambda: ["step 1/3", "step 2/3", "step 3/3", "done"])
    #: Cut the n-th log read (0-based) after this many lines: {read: lines}.
    cut_reads: dict[int, int] = field(default_factory=dict)
    #: Jobs ``find`` knows, by idempotency key.
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    log_reads: int = 0
    _step: int = 0

    # ----- the job's progress ---------------------------------------------------------
    def current(self) -> dict[str, Any]:
        return self.states[min(self._step, len(self.states) - 1)]

    def advance(self) -> dict[str, Any]:
        self._step += 1
        return self.current()

    # ----- HTTP -----------------------------------------------------------------------
    def _answer(self, request: httpx.Request) -> tuple[int, Any]:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        query = parse_qs(request.url.query.decode())
        if method == "POST" and path == "/v1/jobs":
            self.submitted.append(json.loads(request.content))
            return 201, self.current()
        if method == "GET" and path == "/v1/jobs":
            key = query.get("idempotency_key", [""])[0]
            return 200, [self.known[key]] if key in self.known else []
        if path.endswith("/wait"):
            return 200, self.advance()
        if path.endswith("/cancel"):
            return 200, job_view("cancelled")
        if path.endswith("/acknowledge"):
            return 204, None
        if path == "/v1/clusters":
            return 200, [{"name": "gpu-a100"}, {"name": "plane"}]
        if method == "GET" and path.startswith("/v1/jobs/"):
            return 200, self.current()
        return 404, {"error": "not_found", "detail": f"no route {method} {path}"}

    def _response(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/logs"):
            return self._logs(request)
        status, body = self._answer(request)
        if body is None:
            return httpx.Response(status)
        return httpx.Response(status, json=body)

    def _lines(self) -> tuple[list[str], bool]:
        read = self.log_reads
        self.log_reads += 1
        if read in self.cut_reads:
            return self.log[: self.cut_reads[read]], True
        return list(self.log), False

    def _logs(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        lines, cut = self._lines()

        class Stream(httpx.SyncByteStream, httpx.AsyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for line in lines:
                    yield (line + "\n").encode()
                if cut:
                    raise httpx.RemoteProtocolError("peer closed connection")

            async def __aiter__(self) -> AsyncIterator[bytes]:
                for chunk in self:
                    yield chunk

        return httpx.Response(200, stream=Stream())

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._response)

    async def _async_response(self, request: httpx.Request) -> httpx.Response:
        return self._response(request)

    def async_transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._async_response)
