"""Engine and the one transaction helper every API request and activity goes through.

Tenant isolation is enforced by PostgreSQL row-level security on the per-transaction settings
`app.tenant_id` and `app.user_id` (set with `set_config(..., true)`, i.e. SET LOCAL: they vanish at commit,
so a pooled connection, or a transaction-pooling proxy, never carries one tenant into another's request).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import event, exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

CONNECT_TIMEOUT_SECONDS = 10
APP_ROLE = "prognet_app"  # what the API and workers connect as: owns nothing, cannot bypass RLS

_SET_CONTEXT = text(
    "select set_config('app.tenant_id', :tenant, true), set_config('app.user_id', :user, true), "
    "set_config('app.platform', :platform, true)"
)


def make_engine(database_url: str, **kwargs) -> AsyncEngine:
    # hide_parameters: a database error's text must not carry emails or password hashes into logs,
    # activity failures (workflow history, the Temporal UI) or saga failure reasons.
    kwargs.setdefault("hide_parameters", True)
    # During an outage, fail in seconds rather than asyncpg's 60 s connect default.
    kwargs.setdefault("connect_args", {"timeout": CONNECT_TIMEOUT_SECONDS})
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    engine = create_async_engine(database_url, **kwargs)
    event.listen(engine.sync_engine.pool, "checkin", _note_checkin)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    return engine


# A pooled connection is pinged before use only when it sat idle this long. SQLAlchemy's own pre-ping costs three
# round trips (BEGIN, `;`, ROLLBACK) on every checkout, as many as the work of a short transaction; a connection
# used a moment ago has just proven itself, and a server restart takes longer than this. A connection that died
# all the same fails its statement, and SQLAlchemy then drops every connection the pool had opened before.
PING_AFTER_IDLE_SECONDS = 1.0
_CHECKED_IN_AT = "prognet_checked_in_at"


def _note_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info[_CHECKED_IN_AT] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    checked_in_at = record.info.get(_CHECKED_IN_AT)
    if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
        return  # new (it just connected), or used a moment ago
    try:
        dbapi_connection.run_async(lambda driver: driver.fetchrow(";"))  # one round trip
    except Exception as error:
        raise exc.DisconnectionError("pooled connection failed its ping") from error  # the pool connects anew


@asynccontextmanager
async def transaction(
    engine: AsyncEngine, *, tenant_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None, platform: bool = False
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits on success, rolls back on any error.

    `tenant_id` makes that tenant's rows visible and writable; `user_id` additionally shows the caller's own
    memberships (and their tenants) across tenants. Without either, tenant-scoped tables look empty.
    `platform` is for the platform's own mail and its operators: it shows every tenant's email tracking and
    every domain event (the relay's read, migration 0008), and only that: the policies of other tables ignore it.
    Without it, a domain event without a tenant is visible only with `user_id` set to the user it concerns
    (the audit trail's policy, migration 0009).
    """
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        # SQLModel's `exec` takes no textual statement; the session's connection is the one in this transaction.
        connection = await session.connection()
        # No trace spans for the BEGIN (sent with this first statement) and this context: the same plumbing in
        # every transaction, a third of its spans and of their cost. Its statements and COMMIT keep theirs.
        with suppress_instrumentation():
            await connection.execute(
                _SET_CONTEXT,
                {
                    "tenant": str(tenant_id or ""),
                    "user": str(user_id or ""),
                    "platform": "on" if platform else "",
                },
            )
        yield session


@asynccontextmanager
async def standalone(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Statements that stand alone: each one commits by itself (autocommit), in one round trip where a
    `transaction` spends four (BEGIN, its context, the statement, COMMIT). It sets no context, so it is only for
    statements whose outcome row-level security does not decide: tables without it (`users`) and an event without
    a tenant (`models.events.insert_event`), which every context may add. Anything tenant-scoped goes through
    `transaction`, which also overrides whatever a connection might carry. For a single statement on a hot path (a
    login); statements that must hold together belong in `transaction`."""
    async with engine.connect() as connection:
        yield await connection.execution_options(isolation_level="AUTOCOMMIT")
