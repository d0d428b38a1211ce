"""An in-process OTLP/HTTP trace collector for tests: the spans a process exported, decoded.

It answers ``POST /v1/traces`` (protobuf ``ExportTraceServiceRequest``, as the OpenTelemetry
SDK's OTLP/HTTP exporter sends it) and keeps every span it received, so a test reads what
the dispatcher really sent over the wire, not its tracer's account of itself. ``wait_for``
blocks until the spans received satisfy a predicate (no sleeping).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

T = TypeVar("T")


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str  # "" for a root
    name: str
    start: float  # epoch seconds
    end: float
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    events: dict[str, float]
    service_name: str
    raw: str = field(repr=False)  # the span's protobuf text form, for leak checks


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collector:
    """Start with ``running()``; ``endpoint`` is what the dispatcher's settings name."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self.requests = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                collector._receive(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    @contextmanager
    def running(self) -> Iterator[Collector]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()

    def _receive(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    received.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            start=span.start_time_unix_nano / 1e9,
                            end=span.end_time_unix_nano / 1e9,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            status_message=span.status.message,
                            events={e.name: e.time_unix_nano / 1e9 for e in span.events},
                            service_name=str(resource.get("service.name", "")),
                            raw=str(span),
                        )
                    )
        with self._changed:
            self.requests += 1
            self._spans.extend(received)
            self._changed.notify_all()

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._changed:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], T | None], timeout: float = 30.0
    ) -> T:
        """The first truthy ``predicate(spans)``, re-evaluated whenever spans arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate(list(self._spans))
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({(s.trace_id[:8], s.name) for s in self._spans})
                    raise AssertionError(f"spans never satisfied the check; received {names}")
                self._changed.wait(left)
