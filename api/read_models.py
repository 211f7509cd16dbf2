"""The query side: tenant overview and user profile from the read models (DATABASE_READ_URL), behind a Redis cache.

Order of a read (the caller's access is always checked first, by the router, on the primary):
1. `Consistent-After: <event position>` (the `Event-Position` of a command's response): wait up to
   READ_CONSISTENCY_WAIT_SECONDS for the projector to have applied that event, else answer from the primary.
2. Otherwise the cache (`cache:{resource}:{id}`, TTL per resource type), filled from the read model with a short
   Redis lock so a miss under load reads the database once (the others wait for the filled entry, briefly).
3. No read-model row yet (no projector running, or it has not caught up with a new resource): the primary's
   write tables, so a caller always reads its own writes.
A cache (Redis) outage only skips the cache. `source` says where an answer came from (the `Read-Source` header).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from models.db import transaction
from models.read_models import STORE_IF_CURRENT, cache_floor_key, cache_key
from prognet.settings import Settings

log = logging.getLogger("prognet.api")

LOCK_MS = 2000  # a cache filler holds the lock at most this long
LOCK_WAIT_SECONDS = 0.5  # a reader that lost the race waits this long for the winner's entry

Loader = Callable[[], Awaitable[dict[str, Any] | None]]
# A read-model loader answers the row and its `last_seq` (the event position the row reflects)
ModelLoader = Callable[[], Awaitable[tuple[dict[str, Any], int] | None]]


class ReadModels:
    def __init__(self, read_engine: AsyncEngine, engine: AsyncEngine, cache: Redis, settings: Settings) -> None:
        self.read_engine, self.engine, self.cache = read_engine, engine, cache
        self.ttl = {
            "tenant_overview": settings.cache_ttl_tenant_overview,
            "user_profile": settings.cache_ttl_user_profile,
        }
        self.wait = settings.read_consistency_wait_seconds
        self._store_if_current = cache.register_script(STORE_IF_CURRENT)

    # --- the two resources -------------------------------------------------------------------------------------
    async def tenant_overview(self, tenant_id: uuid.UUID, after: int | None) -> tuple[dict[str, Any], str] | None:
        """The overview of a tenant the caller is a member of (checked by the caller of this method)."""
        return await self._read(
            "tenant_overview",
            tenant_id,
            after,
            lambda: self._overview_from_read_model(tenant_id),
            lambda: overview_from_primary(self.engine, tenant_id),
        )

    async def user_profile(self, user_id: uuid.UUID, after: int | None) -> tuple[dict[str, Any], str] | None:
        return await self._read(
            "user_profile",
            user_id,
            after,
            lambda: self._profile_from_read_model(user_id),
            lambda: profile_from_primary(self.engine, user_id),
        )

    async def tenant_summaries(self, user_id: uuid.UUID, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
        """Read-model rows of these tenants (the caller's, as its memberships on the primary say); a tenant
        without a complete row yet is missing from the answer (the caller reads it from the primary)."""
        if not tenant_ids:
            return {}
        async with transaction(self.read_engine, user_id=user_id) as db:
            conn = await db.connection()
            rows = (
                await conn.execute(
                    text("SELECT * FROM rm_tenant_overview WHERE tenant_id = ANY(:ids) AND name IS NOT NULL"),
                    {"ids": tenant_ids},
                )
            ).mappings()
            return {row["tenant_id"]: dict(row) for row in rows}

    # --- the read path -----------------------------------------------------------------------------------------
    async def _read(
        self, resource: str, key_id: uuid.UUID, after: int | None, from_model: ModelLoader, from_primary: Loader
    ) -> tuple[dict[str, Any], str] | None:
        key = cache_key(resource, key_id)
        if after is not None:
            if await self._reached(resource, after):
                found = await from_model()
                if found is not None:
                    await self._store(resource, key, *found)
                    return found[0], "read-model"
            value = await from_primary()
            return (value, "primary") if value is not None else None
        cached = await self._cached(key, key_id)
        if cached is not None:
            return cached, "cache"
        locked = await self._lock(key)
        if not locked:  # someone else is filling it: wait for their entry rather than read the database too
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                cached = await self._cached(key, key_id)
                if cached is not None:
                    return cached, "cache"
        try:
            found = await from_model()
            if found is not None:
                await self._store(resource, key, *found)
                return found[0], "read-model"
        finally:
            if locked:
                await self._unlock(key)
        value = await from_primary()
        return (value, "primary") if value is not None else None

    async def _reached(self, resource: str, seq: int) -> bool:
        deadline = time.monotonic() + self.wait
        while True:
            async with self.read_engine.connect() as conn:
                row = await conn.execute(
                    text("SELECT 1 FROM rm_applied WHERE projection = :p AND seq = :s"), {"p": resource, "s": seq}
                )
                if row.first() is not None:
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    # --- cache, every call forgiving an outage -----------------------------------------------------------------
    async def _cached(self, key: str, key_id: uuid.UUID) -> dict[str, Any] | None:
        try:
            raw = await self.cache.get(key)
        except RedisError:
            return None
        if raw is None:
            return None
        value = json.loads(raw)
        return value if value.get("id") == str(key_id) else None  # an entry is only ever served for its own id

    async def _store(self, resource: str, key: str, value: dict[str, Any], seq: int) -> None:
        """Cache the row unless an event newer than it was invalidated meanwhile (the projector lagging, or this
        read racing the invalidation): then it is served once, not cached."""
        ttl_ms = int(self.ttl[resource] * 1000)
        try:
            await self._store_if_current(
                keys=[key, cache_floor_key(key)], args=[json.dumps(value, default=str), ttl_ms, seq]
            )
        except RedisError:
            log.info("cache unavailable", extra={"key": key})

    async def _lock(self, key: str) -> bool:
        try:
            return bool(await self.cache.set(f"lock:{key}", "1", nx=True, px=LOCK_MS))
        except RedisError:
            return True  # no cache: everyone reads the database

    async def _unlock(self, key: str) -> None:
        try:
            await self.cache.delete(f"lock:{key}")
        except RedisError:
            pass

    # --- the read models (read engine; platform work may read every row, RLS scopes the rest) ------------------
    async def _overview_from_read_model(self, tenant_id: uuid.UUID) -> tuple[dict[str, Any], int] | None:
        async with transaction(self.read_engine, tenant_id=tenant_id) as db:
            conn = await db.connection()
            row = (
                (await conn.execute(text("SELECT * FROM rm_tenant_overview WHERE tenant_id = :t"), {"t": tenant_id}))
                .mappings()
                .first()
            )
        if row is None or row["name"] is None:  # created before the projector ran: no full row until a replay
            return None
        return _overview(dict(row)), row["last_seq"]

    async def _profile_from_read_model(self, user_id: uuid.UUID) -> tuple[dict[str, Any], int] | None:
        async with transaction(self.read_engine, user_id=user_id) as db:
            conn = await db.connection()
            row = (
                (await conn.execute(text("SELECT * FROM rm_user_profile WHERE user_id = :u"), {"u": user_id}))
                .mappings()
                .first()
            )
            memberships = (
                await conn.execute(
                    text(
                        "SELECT tenant_id, role, joined_at FROM rm_user_membership WHERE user_id = :u "
                        "ORDER BY joined_at, tenant_id"
                    ),
                    {"u": user_id},
                )
            ).mappings()
            members = [dict(m) for m in memberships]
        if row is None:
            return None
        return _profile(dict(row), members), row["last_seq"]


def _overview(row: dict[str, Any]) -> dict[str, Any]:
    invoice = None
    if row.get("last_invoice_number") is not None:
        invoice = {
            "number": row["last_invoice_number"],
            "amount": row["last_invoice_amount"],
            "currency": row["last_invoice_currency"],
            "status": row["last_invoice_status"],
        }
    billing = None
    if row.get("currency"):
        billing = {
            "currency": row["currency"],
            "billing_email": row["billing_email"],
            "stripe_customer_id": row["stripe_customer_id"],
        }
    return {
        "id": str(row["tenant_id"]),
        "name": row["name"],
        "slug": row["slug"],
        "status": row["status"],
        "failure_reason": row["failure_reason"],
        "created_by": str(row["created_by"]) if row["created_by"] else None,
        "created_at": row["created_at"],
        "activated_at": row["activated_at"],
        "billing": billing,
        "member_count": row["member_count"],
        "plan": row["plan"],
        "subscription_status": row["subscription_status"],
        "last_invoice": invoice,
        "open_dead_letters": row["open_dead_letters"],
    }


def _profile(row: dict[str, Any], memberships: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": str(row["user_id"]),
        "email": row["email"],
        "display_name": row["display_name"],
        "status": row["status"],
        "created_at": row["created_at"],
        "verified_at": row["verified_at"],
        "last_login_at": row["last_login_at"],
        "memberships": [
            {"tenant_id": str(m["tenant_id"]), "role": m["role"], "joined_at": m["joined_at"]} for m in memberships
        ],
    }


# --- the primary's write tables: the fallback, always current --------------------------------------------------

_OVERVIEW_SQL = """
SELECT t.id AS tenant_id, t.name, t.slug, t.status, t.failure_reason, t.created_by, t.created_at, t.activated_at,
       b.currency, b.billing_email, b.stripe_customer_id,
       (SELECT count(*) FROM memberships m WHERE m.tenant_id = t.id) AS member_count,
       s.plan_id AS plan, s.status AS subscription_status,
       i.number AS last_invoice_number, i.amount AS last_invoice_amount, i.currency AS last_invoice_currency,
       i.status AS last_invoice_status,
       (SELECT count(*) FROM email_messages e WHERE e.tenant_id = t.id AND e.state = 'dead_lettered')
           AS open_dead_letters
FROM tenants t
LEFT JOIN tenant_billing b ON b.tenant_id = t.id
LEFT JOIN LATERAL (SELECT plan_id, status FROM subscriptions WHERE tenant_id = t.id
                   ORDER BY updated_at DESC LIMIT 1) s ON true
LEFT JOIN LATERAL (SELECT number, amount, currency, status FROM invoices WHERE tenant_id = t.id
                   ORDER BY number DESC LIMIT 1) i ON true
WHERE t.id = :t
"""


async def overview_from_primary(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[str, Any] | None:
    async with transaction(engine, tenant_id=tenant_id) as db:
        conn = await db.connection()
        row = (await conn.execute(text(_OVERVIEW_SQL), {"t": tenant_id})).mappings().first()
    return _overview(dict(row)) if row is not None else None


async def profile_from_primary(engine: AsyncEngine, user_id: uuid.UUID) -> dict[str, Any] | None:
    async with transaction(engine, user_id=user_id) as db:
        conn = await db.connection()
        row = (
            (
                await conn.execute(
                    text(
                        "SELECT u.id AS user_id, u.email, u.display_name, u.status, u.created_at, u.verified_at, "
                        "(SELECT max(occurred_at) FROM domain_events d WHERE d.user_id = u.id "
                        "AND d.type = 'user.logged_in') AS last_login_at FROM users u WHERE u.id = :u"
                    ),
                    {"u": user_id},
                )
            )
            .mappings()
            .first()
        )
        memberships = (
            await conn.execute(
                text(
                    "SELECT tenant_id, role, created_at AS joined_at FROM memberships WHERE user_id = :u "
                    "ORDER BY created_at, tenant_id"
                ),
                {"u": user_id},
            )
        ).mappings()
        members = [dict(m) for m in memberships]
    return _profile(dict(row), members) if row is not None else None
