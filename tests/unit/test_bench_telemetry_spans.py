"""The telemetry section's span count: what the trace files gained in a phase, across a rotation."""

from __future__ import annotations

from prognet_dev.bench.telemetry import spans_since, trace_file_sizes


def test_spans_written_are_counted_across_a_rotation(tmp_path):
    traces = tmp_path / "traces"
    traces.mkdir()
    current = traces / "api.jsonl"
    current.write_text("old\n" * 5)
    (traces / "worker.jsonl").write_text("w\n" * 3)
    sizes = trace_file_sizes(tmp_path)

    with current.open("a") as f:
        f.write("new\n" * 2)
    current.rename(traces / "api.1.jsonl")  # rotated: the same file under another name
    current.write_text("newer\n" * 4)
    with (traces / "worker.jsonl").open("a") as f:
        f.write("w\n")

    assert spans_since(tmp_path, sizes) == 2 + 4 + 1
    assert spans_since(tmp_path, trace_file_sizes(tmp_path)) == 0
