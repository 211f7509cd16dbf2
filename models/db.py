"""Engine and the one transaction helper every API request and activity goes through.

Tenant isolation is enforced by PostgreSQL row-level security on the per-transaction settings
`app.tenant_id` and `app.user_id` (set with `set_config(..., true)`, i.e. SET LOCAL: they vanish at commit,
so a pooled connection, or a transaction-pooling proxy, never carries one tenant into another's request).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
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
    return create_async_engine(database_url, pool_pre_ping=True, pool_size=10, max_overflow=10, **kwargs)


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
        await connection.execute(
            _SET_CONTEXT,
            {
                "tenant": str(tenant_id or ""),
                "user": str(user_id or ""),
                "platform": "on" if platform else "",
            },
        )
        yield session
