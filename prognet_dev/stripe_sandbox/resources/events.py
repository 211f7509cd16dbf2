"""/v1/events: the events every state change records (the same objects the webhook endpoint receives), retrieve
and list with Stripe's filters (`type` with `*` wildcards, `types[]`, `created[gt|gte|lt|lte]`)."""

from __future__ import annotations

import fnmatch
from typing import Any

from fastapi import APIRouter, Depends

from .. import params as P
from ..core import Call, current_call
from ..errors import invalid_parameter, resource_missing

router = APIRouter(prefix="/v1/events", tags=["events"])

KIND = "event"


def _created_filter(raw: Any):
    if raw is None:
        return lambda created: True
    if isinstance(raw, str):
        try:
            exact = int(raw)
        except ValueError:
            raise invalid_parameter("created", f"Invalid integer: {raw}", "parameter_invalid_integer") from None
        return lambda created: created == exact
    if not isinstance(raw, dict):
        raise invalid_parameter("created", "Invalid created filter")
    bounds: dict[str, int] = {}
    for op, value in raw.items():
        if op not in ("gt", "gte", "lt", "lte"):
            raise invalid_parameter(f"created[{op}]", f"Received unknown parameter: created[{op}]", "parameter_unknown")
        try:
            bounds[op] = int(value)
        except (TypeError, ValueError):
            raise invalid_parameter(
                f"created[{op}]", f"Invalid integer: {value}", "parameter_invalid_integer"
            ) from None

    def check(created: int) -> bool:
        return (
            ("gt" not in bounds or created > bounds["gt"])
            and ("gte" not in bounds or created >= bounds["gte"])
            and ("lt" not in bounds or created < bounds["lt"])
            and ("lte" not in bounds or created <= bounds["lte"])
        )

    return check


@router.get("")
async def list_events(call: Call = Depends(current_call)) -> dict[str, Any]:
    p = call.params
    P.check_known(p, {"type", "types", "created", "delivery_success", "limit", "starting_after", "ending_before"})
    patterns: list[str] = []
    if p.get("type"):
        patterns.append(str(p["type"]))
    if p.get("types"):
        types = p["types"] if isinstance(p["types"], list) else [p["types"]]
        patterns.extend(str(t) for t in types)
    in_window = _created_filter(p.get("created"))
    events = [
        e
        for e in call.store.list(KIND, call.account)
        if (not patterns or any(fnmatch.fnmatchcase(e["type"], pat) for pat in patterns)) and in_window(e["created"])
    ]
    if "delivery_success" in p:
        delivered = P.boolean(p, "delivery_success")
        events = [e for e in events if (e.get("pending_webhooks", 0) == 0) == delivered]
    return P.paginate(events, p, "/v1/events")


@router.get("/{event_id}")
async def retrieve_event(event_id: str, call: Call = Depends(current_call)) -> dict[str, Any]:
    P.check_known(call.params, set())
    event = call.store.get(KIND, call.account, event_id)
    if event is None:
        raise resource_missing("event", event_id)
    return event
