"""`prognet traces`: the local span store (`<data dir>/traces/*.jsonl`, see `prognet.telemetry`) in a terminal.

A list of the last traces, or one trace as a waterfall: a line per span, indented under its parent, with its
service, a bar placed and sized on the trace's time line, its duration, and ✗ where it failed.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Span = dict[str, Any]
NAME_WIDTH = 44
SERVICE_WIDTH = 15


def load_spans(directory: Path) -> list[Span]:
    """Every span of every file (each service's file and its rotated predecessor); damaged lines are skipped."""
    spans: list[Span] = []
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    span = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if isinstance(span, dict) and {"trace_id", "span_id", "start", "end"} <= span.keys():
                    spans.append(span)
    return spans


def by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    traces: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    return traces


def _root(spans: list[Span]) -> Span:
    ids = {s["span_id"] for s in spans}
    roots = [s for s in spans if s.get("parent_id") not in ids] or spans
    return min(roots, key=lambda s: s["start"])


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+([\w.]+)", re.IGNORECASE)


def label(span: Span) -> str:
    """What a span did, readably: driver spans are named by their verb only (`SELECT`, `GET`, `POST`)."""
    attributes = span.get("attributes") or {}
    statement = attributes.get("db.statement") or attributes.get("db.query.text")
    if attributes.get("db.system") == "postgresql" and statement:
        table = _TABLE.search(statement)
        verb = statement.split(None, 1)[0].upper()
        return f"sql {verb} {table.group(1)}" if table else "sql " + " ".join(statement.split())
    if attributes.get("db.system") == "redis":
        return f"redis {span['name']}"
    url = attributes.get("url.full") or attributes.get("http.url")
    if span.get("kind") == "CLIENT" and url:
        return f"{span['name']} {urlsplit(str(url)).path}"
    return span["name"]


def _ms(nanoseconds: int) -> str:
    return f"{nanoseconds / 1e6:,.1f} ms"


def _when(nanoseconds: int) -> str:
    return datetime.fromtimestamp(nanoseconds / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_list(spans: list[Span], last: int) -> str:
    """The `last` most recent traces, newest first: start, duration, span count, errors, root span, trace id."""
    traces = sorted(by_trace(spans).values(), key=lambda t: min(s["start"] for s in t), reverse=True)[:last]
    if not traces:
        return "no traces recorded yet"
    lines = [f"{'started (UTC)':19}  {'duration':>11}  {'spans':>5}  {'root span':{NAME_WIDTH}}  trace id"]
    for spans_of in traces:
        root = _root(spans_of)
        start, end = min(s["start"] for s in spans_of), max(s["end"] for s in spans_of)
        failed = " ✗" if any(s.get("status") == "ERROR" for s in spans_of) else ""
        name = _fit(f"{root.get('service', '')}: {root['name']}{failed}", NAME_WIDTH)
        lines.append(
            f"{_when(start):19}  {_ms(end - start):>11}  {len(spans_of):>5}  {name:{NAME_WIDTH}}  {root['trace_id']}"
        )
    return "\n".join(lines)


def find_trace(spans: list[Span], trace_id: str) -> list[Span]:
    """The spans of the trace whose id is `trace_id` or starts with it (an unambiguous prefix)."""
    wanted = trace_id.strip().lower()
    traces = by_trace(spans)
    if wanted in traces:
        return traces[wanted]
    matches = [t for t in traces if t.startswith(wanted)]
    return traces[matches[0]] if len(matches) == 1 else []


def _is_sql(span: Span) -> bool:
    return (span.get("attributes") or {}).get("db.system") == "postgresql"


def _fold_sql(siblings: list[Span]) -> list[Span]:
    """A parent's SQL spans as one line, `sql ×N`, from the first statement's start to the last one's end."""
    sql = [s for s in siblings if _is_sql(s)]
    if len(sql) < 2:
        return siblings
    folded = {
        "trace_id": sql[0]["trace_id"],
        "span_id": sql[0]["span_id"] + "+",
        "service": sql[0].get("service", ""),
        "name": f"sql ×{len(sql)}",
        "start": min(s["start"] for s in sql),
        "end": max(s["end"] for s in sql),
        "status": "ERROR" if any(s.get("status") == "ERROR" for s in sql) else "UNSET",
    }
    rest = [s for s in siblings if not _is_sql(s)]
    return sorted([*rest, folded], key=lambda s: (s["start"], s["end"]))


def render_waterfall(spans: list[Span], width: int = 40, fold_sql: bool = False) -> str:
    """One trace: a header line, then each span under its parent, children in start order (with `fold_sql`, a
    parent's SQL statements as one line)."""
    t0 = min(s["start"] for s in spans)
    total = max(max(s["end"] for s in spans) - t0, 1)
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[Span]] = defaultdict(list)
    for span in spans:
        children[span.get("parent_id") if span.get("parent_id") in ids else None].append(span)
    for parent, siblings in children.items():
        siblings.sort(key=lambda s: (s["start"], s["end"]))
        if fold_sql:
            children[parent] = _fold_sql(siblings)

    root = _root(spans)
    errors = sum(s.get("status") == "ERROR" for s in spans)
    lines = [
        f"trace {root['trace_id']}  {root['name']}  {_ms(total)}  {len(spans)} spans"
        + (f"  {errors} failed" if errors else "")
        + f"  {_when(t0)} UTC",
        f"{'service':{SERVICE_WIDTH}} {'span':{NAME_WIDTH}} |{'0 ms':<{width // 2}}{_ms(total):>{width - width // 2}}|",
    ]

    def walk(span: Span, depth: int) -> None:
        begin = round((span["start"] - t0) / total * width)
        length = round((span["end"] - span["start"]) / total * width)
        begin = min(begin, width - 1)
        bar = "·" if span["end"] <= span["start"] else "█" * max(1, min(length, width - begin))
        failed = span.get("status") == "ERROR"
        name = _fit(("  " * depth) + ("✗ " if failed else "") + label(span), NAME_WIDTH)
        line = f"{_fit(span.get('service', ''), SERVICE_WIDTH):{SERVICE_WIDTH}} {name:{NAME_WIDTH}} "
        line += f"|{(' ' * begin + bar).ljust(width)}| {_ms(span['end'] - span['start']):>11}"
        if failed and span.get("error"):
            line += f"  {_fit(span['error'], 80)}"
        lines.append(line)
        for child in children.get(span["span_id"], []):
            walk(child, depth + 1)

    for top in children[None]:
        walk(top, 0)
    return "\n".join(lines)
