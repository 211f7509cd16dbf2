"""The audit trail: `domain_events` as a tenant's owners and admins, or a user, may read it.

Row-level security decides what a transaction sees (migration 0009): a tenant's events only with that tenant
set, a user's own (tenant-less) events only with that user set. The query's own filters only narrow that.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import tuple_
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from api.deps import CurrentUser, DbDep, TenantIdPath, TenantManager
from api.problems import INVALID_CURSOR, Problem, problem_responses
from api.routers.emails import DEFAULT_LIMIT, Cursor, Limit, Since, Until, aware, check_window
from api.schemas import AggregateRef, AuditEvent, AuditEventPage
from models.db import transaction
from models.tables import DomainEvent

router = APIRouter(prefix="/v1", tags=["audit"])

TypeFilter = Annotated[
    str | None,
    Query(
        max_length=100,
        pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*\.?$",
        description="An event type (`user.logged_in`), or a prefix ending in a dot (`user.`).",
    ),
]
_SINCE_UNTIL = "`since`/`until` bound `occurred_at` (ISO 8601; without an offset, UTC)."


def encode_cursor(occurred_at: datetime, seq: int) -> str:
    raw = json.dumps([occurred_at.isoformat(), seq], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        occurred_at, seq = json.loads(raw)
        moment = datetime.fromisoformat(occurred_at)
        if moment.tzinfo is None or not isinstance(seq, int) or isinstance(seq, bool):
            raise ValueError("not a cursor")
        return moment, seq
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise Problem(INVALID_CURSOR, "The cursor is not one this API handed out; start again without it.") from None


def _view(e: DomainEvent) -> AuditEvent:
    return AuditEvent(
        id=e.event_id,
        type=e.type,
        version=e.version,
        occurred_at=e.occurred_at,
        actor=e.actor_id,
        aggregate=AggregateRef(type=e.aggregate_type, id=e.aggregate_id),
        tenant_id=e.tenant_id,
        payload=e.payload,
    )


async def _page(
    engine: AsyncEngine,
    query: Any,
    *,
    tenant_id: uuid.UUID | None,
    user_id: uuid.UUID,
    type: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: str | None,
) -> AuditEventPage:
    """Newest first (`occurred_at`, then the event's sequence number); one extra row tells if there is more."""
    since, until = aware(since), aware(until)
    check_window(since, until)
    if type is not None:
        query = query.where(
            col(DomainEvent.type).startswith(type, autoescape=True) if type.endswith(".") else DomainEvent.type == type
        )
    if since is not None:
        query = query.where(DomainEvent.occurred_at >= since)
    if until is not None:
        query = query.where(DomainEvent.occurred_at < until)
    if cursor is not None:
        occurred_at, seq = decode_cursor(cursor)
        query = query.where(tuple_(DomainEvent.occurred_at, DomainEvent.id) < tuple_(occurred_at, seq))
    query = query.order_by(col(DomainEvent.occurred_at).desc(), col(DomainEvent.id).desc()).limit(limit + 1)
    async with transaction(engine, tenant_id=tenant_id, user_id=user_id) as db:
        rows = list((await db.exec(query)).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        assert rows[-1].id is not None
        next_cursor = encode_cursor(rows[-1].occurred_at, rows[-1].id)
    return AuditEventPage(items=[_view(e) for e in rows], next_cursor=next_cursor)


@router.get(
    "/tenants/{tenant_id}/events",
    response_model=AuditEventPage,
    summary="Your tenant's audit trail",
    description="Owners and admins. Every event recorded in the tenant, newest first, filtered by `type` (exact, "
    f"or a prefix ending in `.`) and time; {_SINCE_UNTIL} Page with `limit` and the opaque `next_cursor`. "
    "Members get 403; anyone outside the tenant 404.",
    responses=problem_responses(400, 401, 403, 404, 422, 503),
)
async def tenant_events(
    tenant_id: TenantIdPath,
    manager: TenantManager,
    engine: DbDep,
    type: TypeFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> AuditEventPage:
    return await _page(
        engine,
        select(DomainEvent).where(DomainEvent.tenant_id == tenant_id),
        tenant_id=tenant_id,
        user_id=manager.user_id,
        type=type,
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )


@router.get(
    "/me/events",
    response_model=AuditEventPage,
    summary="Your account's audit trail",
    description="Events about your account (logins, failed logins, profile, password and email changes), newest "
    f"first, filtered by `type` (exact, or a prefix ending in `.`) and time; {_SINCE_UNTIL} Page with `limit` "
    "and the opaque `next_cursor`. Events inside a tenant are in that tenant's trail.",
    responses=problem_responses(400, 401, 422, 503),
)
async def my_events(
    caller: CurrentUser,
    engine: DbDep,
    type: TypeFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> AuditEventPage:
    return await _page(
        engine,
        select(DomainEvent).where(DomainEvent.user_id == caller.user_id, col(DomainEvent.tenant_id).is_(None)),
        tenant_id=None,
        user_id=caller.user_id,
        type=type,
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )
