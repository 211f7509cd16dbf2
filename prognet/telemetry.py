"""OpenTelemetry tracing, configured once per process (API, worker, relay).

`configure_tracing(service, settings)` builds the one TracerProvider the standard way, so the SDK reads the
`OTEL_*` environment itself (`OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`,
`OTEL_SDK_DISABLED`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*`), and instruments the drivers: asyncpg, redis and
httpx (the stripe SDK's async client). FastAPI and Temporal are instrumented where their objects are built
(`api.app`, `api.temporal_client`, `workers.main`).

Where spans go: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set → OTLP over HTTP
(Jaeger, a collector). Unset, in development → JSON lines under `<data dir>/traces/`, one file per service,
capped (`prognet traces` draws them). Unset in production → nowhere, but ids still reach logs, the
`traceparent` response header and problem bodies. `OTEL_TRACES_EXPORTER=none|console|otlp` overrides.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.propagators import ResponsePropagator, set_global_response_propagator
from opentelemetry.propagators import textmap
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, SpanKind, format_span_id, format_trace_id
from opentelemetry.util.types import Attributes

from prognet.settings import Settings

API = "prognet-api"
WORKER = "prognet-worker"
RELAY = "prognet-relay"
CONSUMERS = "prognet-consumers"
WEBHOOKS_DISPATCHER = "prognet-webhooks-dispatcher"

TRACE_FILE_MAX_BYTES = 8 * 1024 * 1024  # per service; one rotated file (`.1.jsonl`) is kept beside it

_lock = threading.Lock()
_provider: TracerProvider | None = None


def traces_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "traces"


def _disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def configure_process(service_name: str, settings: Settings) -> TracerProvider | None:
    """What every process (API, worker, relay, consumers, webhooks dispatcher) calls once at its start: logging
    (prognet.logs: JSON lines with the trace id, or text under `prognet dev`), then tracing."""
    from prognet.logs import configure_logging  # it reads the current span through this module

    configure_logging(settings)
    if settings.bench_telemetry_off:  # development only: what `prognet bench` compares against
        return None
    return configure_tracing(service_name, settings)


def configure_tracing(
    service_name: str, settings: Settings | None = None, *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install the process's TracerProvider and the driver instrumentations; later calls return the first one
    (tests run the API and the worker in one process: one provider sees both). `exporter` (tests) replaces the
    default exporter and is fed synchronously. Returns None when OTEL_SDK_DISABLED=true."""
    global _provider
    with _lock:
        if _provider is not None or _disabled():
            return _provider
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
        provider = TracerProvider(
            resource=Resource.create(attributes),  # with OTEL_RESOURCE_ATTRIBUTES
            sampler=NoOrphanDriverCalls(sampling._get_from_env_or_default()),  # OTEL_TRACES_SAMPLER(_ARG)
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif (default := _default_exporter(service_name, settings)) is not None:
            provider.add_span_processor(BatchSpanProcessor(default))  # OTEL_BSP_*; exports off the event loop
        trace.set_tracer_provider(provider)
        set_global_response_propagator(TraceparentResponse())
        _instrument_drivers()
        _provider = provider
        return provider


def _default_exporter(service_name: str, settings: Settings | None) -> SpanExporter | None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleSpanExporter(service_name=service_name)
    if choice == "otlp" or endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # reads the endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*
    if settings is not None and settings.environment == "development":
        return JsonlSpanExporter(traces_dir(settings) / f"{service_name}.jsonl")
    return None


def _instrument_drivers() -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (AsyncPGInstrumentor(), RedisInstrumentor(), HTTPXClientInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


class NoOrphanDriverCalls(sampling.Sampler):
    """Drops a client call (SQL, Redis, HTTP, Temporal) that belongs to no request, saga step or relay batch:
    pool pings, the relay's idle polls and health checks would otherwise each be a one-span trace. Everything
    else is up to the configured sampler."""

    def __init__(self, delegate: sampling.Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> sampling.SamplingResult:
        if kind == SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanDriverCalls{{{self.delegate.get_description()}}}"


# --- trace ids for logs, headers and error bodies -----------------------------------------------------------


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, in hex, or None outside any recorded trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format_trace_id(ctx.trace_id), format_span_id(ctx.span_id)


def current_trace_id() -> str | None:
    ids = current_ids()
    return ids[0] if ids else None


def strip_query(span: trace.Span, scope: dict[str, Any]) -> None:
    """A server span's hook: keep paths, drop query strings. They carry tokens (the verification page's link)
    and addresses (admin filters), and traces leave the system."""
    if not scope.get("query_string") or not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for key in ("http.target", "http.url", "url.full"):
        value = attributes.get(key)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(key, value.split("?", 1)[0])
    if "url.query" in attributes:
        span.set_attribute("url.query", "")


class TraceparentResponse(ResponsePropagator):
    """Puts the server span's W3C `traceparent` on every HTTP response (the ASGI instrumentation calls this), so a
    user's error report names its trace."""

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: otel_context.Context | None = None,
        setter: textmap.Setter = textmap.default_setter,
    ) -> None:
        ctx = trace.get_current_span(context).get_span_context()
        if ctx.is_valid:
            value = f"00-{format_trace_id(ctx.trace_id)}-{format_span_id(ctx.span_id)}-{ctx.trace_flags:02x}"
            setter.set(carrier, "traceparent", value)
            setter.set(carrier, "access-control-expose-headers", "traceparent")


# --- the local store: JSON lines ---------------------------------------------------------------------------


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One span as one JSON object (what `prognet traces` reads)."""
    ctx = span.get_span_context()
    assert ctx is not None
    status = span.status
    record: dict[str, Any] = {
        "trace_id": format_trace_id(ctx.trace_id),
        "span_id": format_span_id(ctx.span_id),
        "parent_id": format_span_id(span.parent.span_id) if span.parent else None,
        "service": span.resource.attributes.get("service.name", ""),
        "name": span.name,
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }
    if status.description:
        record["error"] = status.description
    return record


class JsonlSpanExporter(SpanExporter):
    """Appends spans to one JSON-lines file; past `max_bytes` the file becomes `<name>.1.jsonl` (replacing the
    previous one) and a new file starts, so the store stays under twice the cap. One O_APPEND write per batch:
    the batch processor calls this from its own thread, and lines of two processes never interleave."""

    def __init__(self, path: Path, max_bytes: int = TRACE_FILE_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans).encode()
        try:
            with self._lock:
                if self._fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(self._fd, data)
                if os.fstat(self._fd).st_size > self.max_bytes:
                    self._rotate()
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _rotate(self) -> None:
        assert self._fd is not None
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:  # another process may have rotated it
                os.replace(self.path, self.path.with_suffix(".1.jsonl"))
        finally:
            os.close(self._fd)
            self._fd = None

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
