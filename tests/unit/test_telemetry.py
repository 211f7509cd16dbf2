"""Where spans go, and which are kept (prognet.telemetry)."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind

from prognet import telemetry
from prognet.settings import Settings


def test_spans_go_to_otlp_when_an_endpoint_is_set_else_to_the_data_dir_in_development(tmp_path, monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    dev = Settings(environment="development", data_dir=tmp_path)
    local = telemetry._default_exporter(telemetry.API, dev)
    assert isinstance(local, telemetry.JsonlSpanExporter)
    assert local.path == tmp_path / "traces" / "prognet-api.jsonl"
    production = Settings.model_construct(environment="production", data_dir=tmp_path)
    assert telemetry._default_exporter(telemetry.WORKER, production) is None  # ids in logs only

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")
    assert isinstance(telemetry._default_exporter(telemetry.API, dev), OTLPSpanExporter)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry._default_exporter(telemetry.API, dev) is None


def test_driver_calls_outside_any_trace_are_not_recorded():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=telemetry.NoOrphanDriverCalls(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    tracer.start_span("SELECT", kind=SpanKind.CLIENT).end()  # a pool ping, an idle relay poll
    with tracer.start_as_current_span("POST /v1/tenants", kind=SpanKind.SERVER):
        tracer.start_span("INSERT", kind=SpanKind.CLIENT).end()
    with tracer.start_as_current_span("relay.publish"):
        tracer.start_span("MULTI", kind=SpanKind.CLIENT).end()
    assert sorted(s.name for s in exporter.get_finished_spans()) == [
        "INSERT",
        "MULTI",
        "POST /v1/tenants",
        "relay.publish",
    ]
