"""Email delivery tracking for tenant owners and admins: their tenant's messages and counts for a time window.

Reads go through `models.db.transaction(tenant_id=…)`, so row-level security shows the tenant's own messages
only (platform mail, tenant_id NULL, is never visible here); another tenant's id answers 404 like a missing one.
The cursor and time-window helpers here are shared with `api.routers.admin`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, tuple_
from sqlmodel import col, select

from api.deps import DbDep, TenantIdPath, TenantManager
from api.problems import INVALID_CURSOR, INVALID_TIME_WINDOW, Problem, problem_responses
from api.schemas import EMAIL_STATES, EmailPage, EmailStateName, EmailStats, EmailView, TemplateName
from models.db import transaction
from models.tables import EmailMessage

router = APIRouter(prefix="/v1/tenants/{tenant_id}/emails", tags=["emails"])

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
DEFAULT_STATS_WINDOW = timedelta(hours=24)

# --- shared query parameters ---------------------------------------------------------------------------------

StateFilter = Annotated[EmailStateName | None, Query(description="Only messages in this state.")]
TemplateFilter = Annotated[TemplateName | None, Query(description="Only messages of this template.")]
Since = Annotated[
    datetime | None, Query(description="Created at or after this instant (ISO 8601; without an offset, UTC).")
]
Until = Annotated[datetime | None, Query(description="Created before this instant (ISO 8601; without an offset, UTC).")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, at most {MAX_LIMIT}.")]
Cursor = Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")]


def aware(moment: datetime | None) -> datetime | None:
    """Timestamps without an offset are taken as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def check_window(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise Problem(INVALID_TIME_WINDOW, "`since` must be before `until`.")


# --- cursors: opaque base64 of (created_at, id) of the last row of a page, newest first -----------------------


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment, uuid.UUID(row_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise Problem(INVALID_CURSOR, "The cursor is not one this API handed out; start again without it.") from None


def page_after(query: Any, table: Any, cursor: str | None, limit: int) -> Any:
    """Newest first, ties broken by id; rows strictly after the cursor; one extra row tells if there is more."""
    if cursor is not None:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(tuple_(table.created_at, table.id) < tuple_(created_at, row_id))
    return query.order_by(col(table.created_at).desc(), col(table.id).desc()).limit(limit + 1)


def split_page(rows: list, limit: int) -> tuple[list, str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)


def email_filters(
    query: Any, *, state: str | None, template: str | None, since: datetime | None, until: datetime | None
) -> Any:
    if state is not None:
        query = query.where(EmailMessage.state == state)
    if template is not None:
        query = query.where(EmailMessage.template == template)
    if since is not None:
        query = query.where(EmailMessage.created_at >= since)
    if until is not None:
        query = query.where(EmailMessage.created_at < until)
    return query


def email_view(m: EmailMessage) -> EmailView:
    return EmailView(
        id=m.id,
        template=m.template,
        to_address=m.to_address,
        subject=m.subject,
        state=m.state,
        attempts=m.attempts,
        last_reply=m.last_reply,
        created_at=m.created_at,
        updated_at=m.updated_at,
        sent_at=m.sent_at,
    )


# --- routes ----------------------------------------------------------------------------------------------------


@router.get(
    "",
    response_model=EmailPage,
    summary="Your tenant's emails and their delivery state",
    description="Owners and admins. Newest first (`created_at`, then id), filtered by `state`, `template` and a "
    "`since`/`until` window on `created_at`. Page with `limit` and the opaque `next_cursor`. Members "
    "get 403; anyone outside the tenant 404.",
    responses=problem_responses(400, 401, 403, 404, 422),
)
async def list_emails(
    tenant_id: TenantIdPath,
    manager: TenantManager,
    engine: DbDep,
    state: StateFilter = None,
    template: TemplateFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> EmailPage:
    since, until = aware(since), aware(until)
    check_window(since, until)
    query = email_filters(
        select(EmailMessage).where(EmailMessage.tenant_id == tenant_id),
        state=state,
        template=template,
        since=since,
        until=until,
    )
    async with transaction(engine, tenant_id=tenant_id, user_id=manager.user_id) as db:
        rows = list((await db.exec(page_after(query, EmailMessage, cursor, limit))).all())
    rows, next_cursor = split_page(rows, limit)
    return EmailPage(items=[email_view(m) for m in rows], next_cursor=next_cursor)


@router.get(
    "/stats",
    response_model=EmailStats,
    summary="Counts of your tenant's emails by state and template",
    description="Owners and admins. Messages created in `[since, until)`; by default the last 24 hours "
    "(`until` = now, `since` = `until` − 24 h).",
    responses=problem_responses(400, 401, 403, 404, 422),
)
async def email_stats(
    tenant_id: TenantIdPath, manager: TenantManager, engine: DbDep, since: Since = None, until: Until = None
) -> EmailStats:
    until = aware(until) or datetime.now(UTC)
    try:
        since = aware(since) or until - DEFAULT_STATS_WINDOW
    except OverflowError:  # `until` at the very start of the calendar
        raise Problem(INVALID_TIME_WINDOW, "`until` is too early for a default window; give `since` too.") from None
    check_window(since, until)
    query = (
        select(EmailMessage.template, EmailMessage.state, func.count())
        .where(EmailMessage.tenant_id == tenant_id, EmailMessage.created_at >= since, EmailMessage.created_at < until)
        .group_by(EmailMessage.template, EmailMessage.state)
    )
    async with transaction(engine, tenant_id=tenant_id, user_id=manager.user_id) as db:
        counts = (await db.exec(query)).all()
    by_state = dict.fromkeys(EMAIL_STATES, 0)
    by_template: dict[str, int] = {}
    by_template_state: dict[str, dict[str, int]] = {}
    for template, state, n in sorted(counts):
        by_state[state] = by_state.get(state, 0) + n
        by_template[template] = by_template.get(template, 0) + n
        by_template_state.setdefault(template, {})[state] = n
    return EmailStats(
        since=since,
        until=until,
        total=sum(by_template.values()),
        by_state=by_state,
        by_template=by_template,
        by_template_state=by_template_state,
    )
