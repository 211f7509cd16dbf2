"""Log lines: JSON by default with the trace and span ids inside a span, text (for `prognet dev`) on request."""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_span_id, format_trace_id

from prognet.logs import JsonFormatter, TextFormatter, formatter
from prognet.settings import Settings


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("activities.users", logging.INFO, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_names_the_span_it_was_logged_in_and_nothing_outside_one():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("RunActivity:users.create_pending_user") as span:
        inside = json.loads(JsonFormatter().format(record("pending user created", user_id="u-1")))
    outside = json.loads(JsonFormatter().format(record("idle")))
    assert inside["trace_id"] == format_trace_id(span.get_span_context().trace_id)
    assert inside["span_id"] == format_span_id(span.get_span_context().span_id)
    assert (inside["msg"], inside["logger"], inside["level"], inside["user_id"]) == (
        "pending user created",
        "activities.users",
        "INFO",
        "u-1",
    )
    assert "trace_id" not in outside and "span_id" not in outside


def test_text_lines_are_readable_and_still_name_the_trace():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as span:
        line = TextFormatter().format(record("pending user created", user_id="u-1"))
    trace_id = format_trace_id(span.get_span_context().trace_id)
    assert line == f"INFO activities.users: pending user created user_id=u-1 trace={trace_id}"


def test_log_format_is_json_unless_set_to_text(monkeypatch):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert isinstance(formatter(Settings().log_format), JsonFormatter)
    monkeypatch.setenv("LOG_FORMAT", "text")
    assert isinstance(formatter(Settings().log_format), TextFormatter)
