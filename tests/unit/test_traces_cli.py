"""The local span store: spans written by the JSON-lines exporter, drawn by `prognet traces`."""

from __future__ import annotations

import json

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id, set_span_in_context

from prognet import cli
from prognet.telemetry import JsonlSpanExporter
from prognet.trace_view import load_spans, render_waterfall

MS = 1_000_000  # nanoseconds


def record_registration(traces, t0: int) -> str:
    """A registration-shaped trace over two services (two files, as the API and the worker write them)."""
    api = TracerProvider(resource=Resource.create({"service.name": "prognet-api"}))
    api.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(traces / "prognet-api.jsonl")))
    worker = TracerProvider(resource=Resource.create({"service.name": "prognet-worker"}))
    worker.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(traces / "prognet-worker.jsonl")))

    root = api.get_tracer("t").start_span("POST /v1/auth/register", kind=SpanKind.SERVER, start_time=t0)
    ctx = set_span_in_context(root)
    w = worker.get_tracer("t")
    w.start_span("RunWorkflow:Registration", ctx, start_time=t0 + 10 * MS).end(end_time=t0 + 10 * MS)
    activity = w.start_span("RunActivity:users.create_pending_user", ctx, kind=SpanKind.SERVER, start_time=t0 + 20 * MS)
    statement = {"db.system": "postgresql", "db.statement": "INSERT INTO users (id, email) VALUES ($1, $2)"}
    sql = w.start_span(
        "INSERT", set_span_in_context(activity), kind=SpanKind.CLIENT, attributes=statement, start_time=t0 + 30 * MS
    )
    sql.end(end_time=t0 + 50 * MS)
    activity.end(end_time=t0 + 60 * MS)
    smtp = w.start_span("smtp send", ctx, kind=SpanKind.CLIENT, start_time=t0 + 60 * MS)
    smtp.set_status(Status(StatusCode.ERROR, "SmtpTemporaryFailure: connection: ConnectionRefusedError"))
    smtp.end(end_time=t0 + 90 * MS)
    root.end(end_time=t0 + 100 * MS)
    return format_trace_id(root.get_span_context().trace_id)


def test_a_trace_is_drawn_as_a_waterfall_and_listed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROGNET_DATA_DIR", str(tmp_path))  # the command sets it; restored after the test
    traces = tmp_path / "traces"
    t0 = 1_790_000_000 * 10**9
    older = record_registration(traces, t0)
    newer = record_registration(traces, t0 + 5_000 * MS)
    with (traces / "prognet-api.jsonl").open("a") as f:
        f.write('{"trace_id": "cut short by a cra')  # a crash mid-line is skipped, not fatal

    assert cli.main(["traces", "--data-dir", str(tmp_path), newer[:8], "--width", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"trace {newer}  POST /v1/auth/register  100.0 ms  5 spans  1 failed")
    assert len(lines) == 2 + 5
    # each span: its service, its name indented under its parent, a bar placed on the 100 ms line, its duration
    root, workflow, activity, sql, smtp = lines[2:]
    assert root.startswith("prognet-api     POST /v1/auth/register")
    assert root.endswith("|" + "█" * 20 + "|    100.0 ms")
    assert workflow.startswith("prognet-worker    RunWorkflow:Registration") and "|  ·" in workflow
    assert activity.startswith("prognet-worker    RunActivity:users.create_pending_user")
    assert "|    ████████        |" in activity and activity.endswith("40.0 ms")
    assert sql.startswith("prognet-worker      sql INSERT users") and "|      ████          |" in sql
    assert smtp.startswith("prognet-worker    ✗ smtp send") and "|            ██████  |" in smtp
    assert smtp.endswith("30.0 ms  SmtpTemporaryFailure: connection: ConnectionRefusedError")

    assert cli.main(["traces", "--data-dir", str(tmp_path), "--last", "1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and newer in listed[1] and older not in listed[1]
    assert "100.0 ms" in listed[1] and "    5  " in listed[1] and "prognet-api: POST /v1/auth/register ✗" in listed[1]
    assert cli.main(["traces", "--data-dir", str(tmp_path)]) == 0
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]] == [newer, older]

    assert cli.main(["traces", "--data-dir", str(tmp_path), "0" * 32]) == 1
    assert "no trace" in capsys.readouterr().err


def test_the_store_is_capped_by_rotating_each_file(tmp_path):
    provider = TracerProvider(resource=Resource.create({"service.name": "prognet-api"}))
    exporter = JsonlSpanExporter(tmp_path / "prognet-api.jsonl", max_bytes=4_000)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for i in range(200):
        provider.get_tracer("t").start_span(f"span {i}").end()
    exporter.shutdown()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["prognet-api.1.jsonl", "prognet-api.jsonl"]
    assert all((tmp_path / name).stat().st_size < 4_000 + 1_000 for name in files)
    kept = load_spans(tmp_path)
    assert kept and kept[-1]["name"] == "span 199" and len(kept) < 200  # the oldest went with the rotation
    assert {s["service"] for s in kept} == {"prognet-api"}
    assert all(json.loads(json.dumps(s)) == s for s in kept)


def test_fold_sql_puts_a_steps_statements_on_one_line():
    def span(span_id, name, parent, start, end, **attributes):
        return {
            "trace_id": "t" * 32,
            "span_id": span_id,
            "parent_id": parent,
            "service": "prognet-worker",
            "name": name,
            "start": start * MS,
            "end": end * MS,
            "status": "UNSET",
            "attributes": attributes,
        }

    sql = {"db.system": "postgresql", "db.statement": "SELECT users.id FROM users WHERE users.id = $1"}
    spans = [
        span("a", "RunActivity:users.activate_user", None, 0, 100),
        span("b", "SELECT", "a", 10, 20, **sql),
        span("c", "smtp send", "a", 30, 40),
        span("d", "SELECT", "a", 50, 90, **sql),
    ]
    full = render_waterfall(spans, width=10).splitlines()[2:]
    assert [line.split("|")[0].strip() for line in full] == [
        "prognet-worker  RunActivity:users.activate_user",
        "prognet-worker    sql SELECT users",
        "prognet-worker    smtp send",
        "prognet-worker    sql SELECT users",
    ]
    folded = render_waterfall(spans, width=10, fold_sql=True).splitlines()[2:]
    assert [line.split("|")[0].split(None, 1)[1].strip() for line in folded] == [
        "RunActivity:users.activate_user",
        "sql ×2",
        "smtp send",
    ]
    assert folded[1].endswith(" 80.0 ms")  # from the first statement's start to the last one's end
