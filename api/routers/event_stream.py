"""`GET /v1/events/stream`: the caller's own events, or a tenant's, as server-sent events (`api.sse`)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from api.deps import MANAGER_ROLES, TENANT_NOT_FOUND, CurrentUser, DbDep, SettingsDep
from api.problems import NOT_FOUND, Problem
from api.sse import EventStream, TypeFilter, admit, event_messages, start_position, stream_responses
from models.db import transaction
from models.event_stream import StreamEvent, tenant_stream, user_stream
from models.tables import Membership

router = APIRouter(prefix="/v1/events", tags=["events"])

# A tenant's events only its owners and admins may see, as the matching HTTP routes (invitations, emails).
MANAGER_ONLY = ("invitation.", "email.")

STREAM_DESCRIPTION = """\
An endless `text/event-stream`. Each event is one message: `id:` its position in the stream (send it back as
`Last-Event-ID` to resume), `event:` its type (see the event catalogue), `data:` JSON with `event_id`, `type`,
`version`, `occurred_at`, `aggregate` (`type`, `id`), `tenant_id` and `payload`. Comment lines (`: heartbeat`) keep
idle connections open. `event: reset` means Last-Event-ID is older than the stream keeps: re-read state over HTTP.
`event: error` is the last message of a stream the server ends, with a `reason`: `session-ended`,
`access-revoked`, `slow-consumer`, `cache-unavailable`, `database-unavailable`.
"""


async def member_role(engine: AsyncEngine, tenant_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    """The caller's role in the tenant, read through row-level security as `api.deps.tenant_member` does."""
    async with transaction(engine, tenant_id=tenant_id, user_id=user_id) as db:
        membership = await db.get(Membership, (tenant_id, user_id))
    return membership.role if membership is not None else None


@router.get(
    "/stream",
    summary="Follow events as server-sent events",
    description="Without `tenant_id`: the events about you (your account, logins, memberships). With it: that "
    "tenant's events (you must be a member; invitation and email events only for owners and admins). "
    "Reconnect with `Last-Event-ID` (or `?last_event_id=`) to get every event you missed, in order. "
    "At most SSE_MAX_STREAMS_PER_USER open streams per user (then 429), and SSE_MAX_STREAMS_PER_PROCESS per API "
    f"process (then 503 `streams-at-capacity`; retry after Retry-After).\n\n{STREAM_DESCRIPTION}",
    response_class=EventStream,
    status_code=200,
    responses=stream_responses("The event stream."),
)
async def stream_events(
    request: Request,
    caller: CurrentUser,
    engine: DbDep,
    settings: SettingsDep,
    tenant_id: Annotated[uuid.UUID | None, Query(description="A tenant you are a member of.")] = None,
    types: Annotated[
        str | None,
        Query(
            max_length=1000,
            pattern=r"^[A-Za-z0-9_.*,]*$",
            description="Comma-separated event types; `user.*` matches a prefix. Default: every type.",
            examples=["tenant.*,member.added"],
        ),
    ] = None,
    last_event_id: Annotated[
        str | None, Query(max_length=64, description="For clients that cannot set the Last-Event-ID header.")
    ] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=64, description="The id of the last event you got.")
    ] = None,
) -> EventStream:
    wanted = TypeFilter.parse(types)
    resume_from = last_event_id_header or last_event_id
    role: str | None = None
    if tenant_id is not None:
        role = await member_role(engine, tenant_id, caller.user_id)
        if role is None:
            raise Problem(NOT_FOUND, TENANT_NOT_FOUND)
        stream = tenant_stream(tenant_id)
    else:
        stream = user_stream(caller.user_id)

    async def still_member() -> bool:
        nonlocal role
        assert tenant_id is not None
        role = await member_role(engine, tenant_id, caller.user_id)
        return role is not None

    def visible(event: StreamEvent) -> bool:
        if not wanted(event.type):
            return False
        return tenant_id is None or role in MANAGER_ROLES or not event.type.startswith(MANAGER_ONLY)

    guard = await admit(request.app.state, caller, settings, access=still_member if tenant_id is not None else None)
    redis = request.app.state.sse_redis
    try:
        start = await start_position(redis, stream, resume_from)
    except BaseException:
        await guard.close()
        raise
    messages = event_messages(
        redis,
        request.app.state.sse_fanout,
        stream,
        start,
        visible=visible,
        # a membership change in this tenant may be the caller's own: recheck before sending anything further
        recheck_on=lambda event: tenant_id is not None and event.type.startswith("member."),
        guard=guard,
        heartbeat=settings.sse_heartbeat_seconds,
    )
    return EventStream(messages, send_timeout=settings.sse_send_timeout_seconds, on_close=guard.close)
