"""`prognet events tail`: print the event stream live, one line per event."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import sys
from typing import Any, TextIO

from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.event_stream import ALL_EVENTS, StreamEvent, tenant_stream, user_stream


def pick_stream(tenant: str | None, user: str | None) -> str:
    """The narrowest stream that holds what was asked for (the other filter is applied per entry)."""
    if user:
        return user_stream(user)
    if tenant:
        return tenant_stream(tenant)
    return ALL_EVENTS


def line(stream_id: str, event: StreamEvent) -> str:
    aggregate = f"{event.aggregate_type}:{event.aggregate_id}"
    payload = json.dumps(event.payload, separators=(",", ":"), sort_keys=True)
    return f"{stream_id}  {event.type} v{event.version}  {aggregate}  tenant={event.tenant_id or '-'}  {payload}"


def matches(event: StreamEvent, tenant: str | None, types: list[str]) -> bool:
    if tenant and str(event.tenant_id) != tenant:
        return False
    return not types or any(fnmatch.fnmatchcase(event.type, pattern) for pattern in types)


async def tail(
    redis: Redis,
    *,
    tenant: str | None = None,
    user: str | None = None,
    types: list[str] | None = None,
    count: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print events added from now on (`--type` takes globs such as `user.*`); stop after `count` if given."""
    stream = pick_stream(tenant, user)
    last = await _tail_id(redis, stream)  # "$" resolved now: nothing added after the banner is missed
    print(f"tailing {stream} (Ctrl-C stops)", file=sys.stderr, flush=True)
    printed = 0
    while count is None or printed < count:
        try:
            response: Any = await redis.xread({stream: last}, block=5000, count=100)
        except RedisError as exc:
            print(f"redis: {exc}; retrying", file=sys.stderr, flush=True)
            await asyncio.sleep(1)
            continue
        for _, entries in response:
            for entry_id, fields in entries:
                last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                event = StreamEvent.from_fields(fields)
                if matches(event, tenant if user else None, types or []):
                    print(line(last, event), file=out, flush=True)
                    printed += 1
                    if count is not None and printed >= count:
                        return printed
    return printed


async def _tail_id(redis: Redis, stream: str) -> str:
    while True:
        try:
            newest: Any = await redis.xrevrange(stream, count=1)
        except RedisError as exc:
            print(f"redis: {exc}; retrying", file=sys.stderr, flush=True)
            await asyncio.sleep(1)
            continue
        if not newest:
            return "0-0"
        entry_id = newest[0][0]
        return str(entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
