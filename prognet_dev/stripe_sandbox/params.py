"""Parameter checks shared by resources, with Stripe's error codes and messages."""

from __future__ import annotations

import re
from typing import Any

from .errors import StripeError, invalid_parameter, unknown_parameter

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ALWAYS_ALLOWED = {"expand"}  # accepted everywhere; the sandbox returns objects unexpanded


def check_known(params: dict[str, Any], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed and name not in ALWAYS_ALLOWED:
            raise unknown_parameter(name)


def string(params: dict[str, Any], name: str, *, required: bool = False, max_length: int = 5000) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise StripeError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        return None
    if not isinstance(value, str):
        raise invalid_parameter(name, f"Invalid string: {name} must be a string", "parameter_invalid_string")
    if len(value) > max_length:
        raise invalid_parameter(
            name,
            f"Invalid string: {value[:20]}...; must be at most {max_length} characters",
            "parameter_invalid_string",
        )
    return value


def nullable_string(params: dict[str, Any], name: str, **kwargs: Any) -> str | None:
    """`name=` (empty) unsets the field, as in Stripe."""
    value = string(params, name, **kwargs)
    return value or None


def integer(params: dict[str, Any], name: str, *, required: bool = False, minimum: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise StripeError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise invalid_parameter(name, f"Invalid integer: {raw}", "parameter_invalid_integer") from None
    if minimum is not None and value < minimum:
        raise invalid_parameter(
            name, f"This value must be greater than or equal to {minimum}.", "parameter_invalid_integer"
        )
    return value


def boolean(params: dict[str, Any], name: str, default: bool = False) -> bool:
    """Stripe's form booleans: `true`/`false`."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    if raw in ("true", "false"):
        return raw == "true"
    raise invalid_parameter(name, f"Invalid boolean: {raw}", "parameter_invalid_boolean")


def choice(params: dict[str, Any], name: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
    value = string(params, name)
    if value is None or value == "":
        return default
    if value not in allowed:
        raise invalid_parameter(name, f"Invalid {name}: must be one of {', '.join(allowed)}")
    return value


def currency(params: dict[str, Any], name: str = "currency", *, required: bool = False) -> str | None:
    value = string(params, name, required=required)
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z]{3}", value):
        raise invalid_parameter(
            name,
            f"Invalid currency: {value}. Stripe currently supports these currencies: "
            "usd, eur, gbp, … (three-letter ISO codes)",
            "parameter_invalid_string",
        )
    return value.lower()


def email(params: dict[str, Any], name: str = "email") -> str | None:
    value = nullable_string(params, name, max_length=512)
    if value is not None and not _EMAIL.match(value):
        raise invalid_parameter(name, f"Invalid email address: {value}", "email_invalid")
    return value


def metadata(value: Any, current: dict[str, str] | None = None) -> dict[str, str]:
    """Stripe metadata rules: ≤ 50 keys, key ≤ 40 chars, value ≤ 500 chars; merged into `current`;
    a key set to "" is removed; `metadata=` (empty string) clears it."""
    result = dict(current or {})
    if value is None:
        return result
    if value == "":
        return {}
    if isinstance(value, list):  # keys "0", "1", … were read as a list by the form decoder
        value = {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        raise invalid_parameter("metadata", "Invalid object", "parameter_invalid_string")
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid_parameter(f"metadata[{key}]", "Invalid metadata value: must be a string")
        if len(key) > 40:
            raise invalid_parameter(f"metadata[{key}]", "Metadata keys can have up to 40 characters.")
        if len(item) > 500:
            raise invalid_parameter(f"metadata[{key}]", "Metadata values can have up to 500 characters.")
        if item == "":
            result.pop(key, None)
        else:
            result[key] = item
    if len(result) > 50:
        raise invalid_parameter("metadata", "You can have up to 50 metadata keys.")
    return result


def paginate(objects: list[dict[str, Any]], params: dict[str, Any], url: str) -> dict[str, Any]:
    """Stripe list envelope with limit (1..100, default 10), starting_after and ending_before."""
    limit = integer(params, "limit") or 10
    if not 1 <= limit <= 100:
        raise invalid_parameter("limit", "This value must be between 1 and 100.", "parameter_invalid_integer")
    after, before = params.get("starting_after"), params.get("ending_before")
    ids = [o["id"] for o in objects]
    if after:
        if after not in ids:
            raise StripeError(404, f"No such object: '{after}'", code="resource_missing", param="starting_after")
        objects = objects[ids.index(after) + 1 :]
        page = objects[:limit]
    elif before:
        if before not in ids:
            raise StripeError(404, f"No such object: '{before}'", code="resource_missing", param="ending_before")
        objects = objects[: ids.index(before)]
        page = objects[-limit:]
    else:
        page = objects[:limit]
    return {"object": "list", "url": url, "has_more": len(objects) > len(page), "data": page}
