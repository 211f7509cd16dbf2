"""Stripe's form encoding: `metadata[tenant_id]=…`, `expand[]=…`, `items[0][price]=…` → nested dicts and lists."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from .errors import StripeError

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def decode(raw: str | bytes) -> dict[str, Any]:
    """Decode an application/x-www-form-urlencoded body or query string the way Stripe reads it."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    root: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        m = _KEY.match(key)
        if not m:
            raise StripeError(400, f"Invalid parameter name: {key}", code="parameter_invalid_string", param=key)
        path = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        _assign(root, path, value)
    return _listify(root)


def _assign(node: dict[str, Any], path: list[str], value: str) -> None:
    for part in path[:-1]:
        if part == "":  # `a[][b]` — a new element per `[]`
            part = str(sum(1 for k in node if k.isdigit()))
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    last = path[-1]
    if last == "":
        last = str(sum(1 for k in node if k.isdigit()))
    node[last] = value


def _listify(node: Any) -> Any:
    """Dicts whose keys are all 0..n-1 become lists (`expand[]`, `items[0]`)."""
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def canonical(params: Any) -> Any:
    """A comparable form of decoded params (idempotency fingerprints)."""
    if isinstance(params, dict):
        return {k: canonical(params[k]) for k in sorted(params)}
    if isinstance(params, list):
        return [canonical(v) for v in params]
    return params
