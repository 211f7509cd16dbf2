"""The event catalogue lists exactly the event types the code records (found by parsing the source)."""

from __future__ import annotations

import ast
import importlib
import itertools
from pathlib import Path
from typing import get_args

import pytest

from models.event_catalogue import CATALOGUE, UnknownEvent, markdown, parse_payload, schema_for

REPO = Path(__file__).resolve().parents[2]
EMITTERS = ("activities", "api", "prognet")


class Site:
    def __init__(self, path: Path, tree: ast.Module) -> None:
        self.path, self.tree = path, tree
        self.module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        self.parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def function_of(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef:
        while not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node = self.parents[node]
        return node

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"


SITES = [Site(p, ast.parse(p.read_text())) for package in EMITTERS for p in sorted((REPO / package).rglob("*.py"))]


def _name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def calls_of(name: str) -> list[tuple[Site, ast.Call]]:
    return [
        (site, node)
        for site in SITES
        for node in ast.walk(site.tree)
        if isinstance(node, ast.Call) and _name(node.func) == name
    ]


def argument(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if len(call.args) > index else None


def resolve(site: Site, expr: ast.expr) -> set[str]:
    """Every string `expr` can be: literals, both branches of `a if c else b`, an f-string over a Literal-typed
    request field, such a field itself, or a parameter of the enclosing function (then: what its callers pass)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        return resolve(site, expr.body) | resolve(site, expr.orelse)
    if isinstance(expr, ast.JoinedStr):
        parts = [resolve(site, v.value) if isinstance(v, ast.FormattedValue) else resolve(site, v) for v in expr.values]
        return {"".join(combo) for combo in itertools.product(*parts)}
    func = site.function_of(expr)
    params = [a.arg for a in (*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs)]
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in params:
        arg = next(a for a in (*func.args.args, *func.args.kwonlyargs) if a.arg == expr.value.id)
        assert isinstance(arg.annotation, ast.Name), f"{site.where(expr)}: annotate {arg.arg} with its request model"
        model = getattr(importlib.import_module(site.module), arg.annotation.id)
        values = get_args(model.model_fields[expr.attr].annotation)
        assert values and all(isinstance(v, str) for v in values), f"{site.where(expr)}: {expr.attr} is no Literal"
        return set(values)
    if isinstance(expr, ast.Name) and expr.id in params:
        index = [a.arg for a in func.args.args].index(expr.id) if expr.id in [a.arg for a in func.args.args] else -1
        found: set[str] = set()
        for caller_site, call in calls_of(func.name):
            passed = argument(call, index if index >= 0 else 10_000, expr.id)
            if passed is not None:
                found |= resolve(caller_site, passed)
        assert found, f"{site.where(expr)}: no caller of {func.name} passes {expr.id}"
        return found
    raise AssertionError(f"{site.where(expr)}: cannot tell which event type this is: {ast.unparse(expr)}")


def emitted_types() -> dict[str, str]:
    """event type → one place that records it"""
    found: dict[str, str] = {}
    # record_event(session, type, ...) adds it to a transaction; domain_event(type, ...) builds one to insert alone
    for name, index in (("record_event", 1), ("domain_event", 0)):
        for site, call in calls_of(name):
            expr = argument(call, index, "type")
            assert expr is not None, f"{site.where(call)}: {name} without a type"
            for event_type in resolve(site, expr):
                found.setdefault(event_type, site.where(call))
    return found


def test_every_recorded_event_type_is_in_the_catalogue_and_nothing_else():
    emitted = emitted_types()
    catalogued = {event_type for event_type, _ in CATALOGUE}
    assert len(emitted) >= 30  # the resolver really followed the dynamic sites (f-strings, parameters, fields)
    assert {t: where for t, where in emitted.items() if t not in catalogued} == {}, "add these to the catalogue"
    assert catalogued - set(emitted) == set(), "no code records these any more"


def test_dynamic_sites_are_followed():
    emitted = emitted_types()
    assert {"tenant.suspended", "tenant.reactivated", "tenant.failed"} <= set(emitted)  # set_tenant_status(event=)
    assert {"invitation.revoked", "invitation.expired"} <= set(emitted)  # f"invitation.{req.status}"
    assert {"invoice.paid", "invoice.uncollectible"} <= set(emitted)  # req.event_type
    assert {"email.retry_requested", "email.discard_requested"} <= set(emitted)  # _record(..., event, ...)
    assert {"user.platform_admin_granted", "user.platform_admin_revoked"} <= set(emitted)  # a if grant else b


def test_unknown_types_and_versions_are_refused_by_name():
    assert schema_for("user.verified", 1).model_fields == {}
    with pytest.raises(UnknownEvent, match=r"unknown version 7 of event type 'user.verified' \(known: \[1\]\)"):
        schema_for("user.verified", 7)
    with pytest.raises(UnknownEvent, match=r"unknown event type 'user\.teleported'"):
        schema_for("user.teleported", 1)


def test_a_payload_validates_against_its_schema():
    by = "6f1c8a52-7d5e-4a53-9a43-5b0c4f7f6b11"
    payload = parse_payload("member.role_changed", 1, {"user_id": by, "from": "member", "to": "admin", "by": by})
    assert payload.model_dump(by_alias=True, mode="json") == {"user_id": by, "from": "member", "to": "admin", "by": by}
    with pytest.raises(ValueError, match="slug"):
        parse_payload("tenant.created", 1, {})


def test_the_markdown_table_has_one_row_per_type_and_version():
    rows = markdown().splitlines()
    assert rows[0] == "| type | version | aggregate | payload | meaning |"
    assert len(rows) == 2 + len(CATALOGUE)
    assert "| `member.role_changed` | 1 | tenant | `user_id`: uuid, `from`: str, `to`: str, `by`: uuid |" in markdown()
    assert all(row.count("|") == 6 for row in rows)  # no `|` inside a cell
