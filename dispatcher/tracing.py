"""Optional OpenTelemetry traces: one trace per job, from submission to its outcome.

Off by default (``tracing.enabled``); when on, spans go to an OTLP/HTTP endpoint through the
OpenTelemetry SDK's batch processor (the ``tracing`` extra installs it). What a job's trace
holds::

    job                      submission -> finished (emitted when it finishes)
    ├── submit               the API call: routing at submission, the record created
    │   └── route            the decision and its explanation
    ├── queued               waiting for room (the latest routing explanation)
    ├── launching            attempt N named -> its pod exists
    │   ├── dependencies     copies of the task's Secrets/ConfigMaps made there first
    │   └── pod.create       the create call on the chosen cluster
    │       └── credentials  the cluster's credentials (cached, or fetched from Vault)
    │           └── vault.*  logins and reads when fetched
    ├── pending              pod created -> running (event ``scheduled``)
    ├── running              running -> finished
    └── moving, cancelling   when they happen

A job's trace and its root span have ids derived from the job: its trace id is the caller's
(a W3C ``traceparent`` header on the submission, which the Airflow hook sends) or a hash of
the job id, and the root span's id is a hash of the job id. So the phases are emitted as
each ends, by whichever replica handles the job, also after a restart, and all land under
the one root, which is emitted last, when the job finishes. Phase spans carry explicit
start and end times (the moments the job's state changed); live spans (``pod.create`` and
what it calls) are timed as they run.

Spans carry job ids, cluster, namespace and pod names, states, failure classes and routing
explanations: never a spec's values, a log line or a credential.

I/O: the exporter's, on the SDK's own thread.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispatcher.errors import ConfigError, Problem
from dispatcher.settings import TracingSettings

try:  # the API comes with the `tracing` extra (and with Airflow); without it, tracing is off
    from opentelemetry import trace as otel
    from opentelemetry.context import Context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
except ImportError:  # pragma: no cover - exercised by installs without the extra
    otel = None  # type: ignore[assignment]

if TYPE_CHECKING:  # the SDK is imported only when tracing is enabled
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "JobTrace",
    "child",
    "configure",
    "emit",
    "enabled",
    "live",
    "parse_traceparent",
    "shutdown",
]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ATTRIBUTE_CHARS = 1024
_INSTRUMENTATION = "kube-dispatcher"


def parse_traceparent(value: str | None) -> str | None:
    """``value`` if it is a valid W3C ``traceparent`` of version 00, else ``None``.

    An invalid header is ignored (the W3C recommendation), not refused: a tracing problem of
    the caller never fails its submission."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return None
    return match[0]


def _hashed(text: str, bits: int) -> int:
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[: bits // 8], "big")
    return value or 1  # an id of zero is invalid


@dataclass(frozen=True, slots=True)
class JobTrace:
    """Where a job's spans go: its trace, its root span and the caller's span above it."""

    job_id: str
    traceparent: str | None = None  # the submitter's, validated (``parse_traceparent``)

    @property
    def trace_id(self) -> int:
        if self.traceparent:
            return int(self.traceparent[3:35], 16)
        return _hashed(f"trace/{self.job_id}", 128)

    @property
    def root_span_id(self) -> int:
        return _hashed(f"root/{self.job_id}", 64)

    @property
    def parent_span_id(self) -> int | None:
        return int(self.traceparent[36:52], 16) if self.traceparent else None

    @property
    def sampled(self) -> bool:
        return not self.traceparent or bool(int(self.traceparent[53:55], 16) & 1)


class _State:
    """The configured tracer (``None``: tracing off) and the ids to force on the next span."""

    def __init__(self) -> None:
        self.tracer: Tracer | None = None
        self.provider: TracerProvider | None = None
        self.forced = threading.local()


_state = _State()


def enabled() -> bool:
    return _state.tracer is not None


def configure(settings: TracingSettings) -> None:
    """Start exporting (once per process) if ``settings.enabled``; otherwise nothing.

    Raises ``ConfigError`` when tracing is enabled but the SDK is not installed."""
    if not settings.enabled or _state.tracer is not None:
        return
    # Imported here: the SDK and exporter are optional, and loaded only when enabled.
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            [
                Problem(
                    "tracing.enabled",
                    "the OpenTelemetry SDK is not installed: install kube-dispatcher[tracing] "
                    f"({exc.name} is missing)",
                )
            ]
        ) from None

    forced = _state.forced

    class _Ids(RandomIdGenerator):
        """Random ids, except for the ids ``_forcing`` sets for the span being started."""

        def generate_span_id(self) -> int:
            value: int | None = getattr(forced, "span_id", None)
            return value if value is not None else super().generate_span_id()

        def generate_trace_id(self) -> int:
            value: int | None = getattr(forced, "trace_id", None)
            return value if value is not None else super().generate_trace_id()

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        id_generator=_Ids(),
    )
    exporter = OTLPSpanExporter(
        endpoint=str(settings.endpoint), timeout=settings.export_timeout_seconds
    )
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=settings.export_delay_seconds * 1000)
    )
    _state.provider = provider
    _state.tracer = provider.get_tracer(_INSTRUMENTATION)


def shutdown() -> None:
    """Export what is buffered, then stop (at the end of the process)."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        provider.shutdown()


@contextmanager
def _forcing(trace_id: int, span_id: int) -> Iterator[None]:
    _state.forced.trace_id, _state.forced.span_id = trace_id, span_id
    try:
        yield
    finally:
        _state.forced.trace_id = _state.forced.span_id = None


def _remote(trace_id: int, span_id: int, sampled: bool) -> Any:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return otel.set_span_in_context(NonRecordingSpan(parent))


def _parent_of_root(job: JobTrace) -> Any:
    parent = job.parent_span_id
    if parent is None:
        return Context()  # a root: not a child of whatever is current in this thread
    return _remote(job.trace_id, parent, job.sampled)


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or value == "":
            continue
        too_long = isinstance(value, str) and len(value) > _ATTRIBUTE_CHARS
        kept[key] = value[: _ATTRIBUTE_CHARS - 1] + "…" if too_long else value
    return kept


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def emit(
    job: JobTrace,
    name: str,
    start: float,
    end: float,
    attributes: Mapping[str, Any] | None = None,
    *,
    root: bool = False,
    error: str | None = None,
    events: Mapping[str, float] | None = None,
) -> None:
    """A finished span of ``job`` from ``start`` to ``end`` (epoch seconds): a phase under
    its root, or (``root``) the root itself. Nothing when tracing is off."""
    tracer = _state.tracer
    if tracer is None:
        return
    if root:
        with _forcing(job.trace_id, job.root_span_id):
            span = tracer.start_span(
                name,
                context=_parent_of_root(job),
                start_time=_ns(start),
                attributes=_attributes(attributes or {}),
            )
    else:
        span = tracer.start_span(
            name,
            context=_remote(job.trace_id, job.root_span_id, job.sampled),
            start_time=_ns(start),
            attributes=_attributes(attributes or {}),
        )
    for event, at in (events or {}).items():
        span.add_event(event, timestamp=_ns(at))
    if error:
        span.set_status(Status(StatusCode.ERROR, error[:_ATTRIBUTE_CHARS]))
    span.end(end_time=_ns(max(start, end)))


@contextmanager
def live(
    job: JobTrace, name: str, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span | None]:
    """A span of ``job`` under its root, timed as the block runs and current within it (so
    ``child`` spans of the code it calls attach to it). ``None`` when tracing is off."""
    tracer = _state.tracer
    if tracer is None:
        yield None
        return
    context = _remote(job.trace_id, job.root_span_id, job.sampled)
    with tracer.start_as_current_span(
        name, context=context, attributes=_attributes(attributes or {})
    ) as span:
        yield span


@contextmanager
def child(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """A span under the current one, if there is a recording span (a job's ``live`` span):
    the credential code's calls show in a job's trace, and background refreshes, which no
    job waits for, make no traces of their own."""
    tracer = _state.tracer
    if tracer is None:
        yield None
        return
    if not otel.get_current_span().is_recording():
        yield None
        return
    with tracer.start_as_current_span(name, attributes=_attributes(attributes or {})) as span:
        yield span
