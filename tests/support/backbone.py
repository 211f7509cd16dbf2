"""What a test prints when a read model stays behind: where a tenant's events are between the outbox and the
projector, and what could hold the relay's barrier (an open writing transaction anywhere on the server)."""

from __future__ import annotations

import uuid

import asyncpg
from redis.asyncio import Redis

from models.event_stream import ALL_EVENTS
from models.read_models import TENANT_OVERVIEW
from relay.relay import PUBLISHED_KEY, STATS_KEY


async def backbone_story(postgres_dsn: str, redis_url: str, tenant_id: uuid.UUID | str) -> str:
    tenant = uuid.UUID(str(tenant_id))
    lines: list[str] = []
    conn = await asyncpg.connect(postgres_dsn)
    try:
        barrier = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        saved = await conn.fetchrow("SELECT txid::text, seq, updated_at FROM relay_position")
        lines.append(f"barrier (xmin) {barrier}; relay_position {dict(saved) if saved else None}")
        events = await conn.fetch(
            "SELECT e.id, e.txid::text AS txid, e.type, e.occurred_at, a.applied_at FROM domain_events e "
            "LEFT JOIN rm_applied a ON a.event_id = e.event_id AND a.projection = $2 "
            "WHERE e.tenant_id = $1 ORDER BY e.txid, e.id",
            tenant,
            TENANT_OVERVIEW.name,
        )
        for e in events:  # applied_at: the projector's transaction start (now()), so the order it applied them in
            when, applied = e["occurred_at"], e["applied_at"]
            lines.append(f"  event {e['id']} txid {e['txid']} {e['type']} at {when}: applied at {applied}")
        row = await conn.fetchrow(
            "SELECT status, last_seq, updated_at FROM rm_tenant_overview WHERE tenant_id = $1",
            tenant,
        )
        lines.append(f"  read model row: {dict(row) if row else None}")
        open_xacts = await conn.fetch(
            "SELECT pid, application_name, state, xact_start, backend_xid::text AS xid, left(query, 100) AS query "
            "FROM pg_stat_activity WHERE backend_xid IS NOT NULL OR state LIKE 'idle in transaction%' "
            "ORDER BY xact_start"
        )
        for x in open_xacts:
            lines.append(f"  open transaction: {dict(x)}")
    finally:
        await conn.close()
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        published, stats = await redis.get(PUBLISHED_KEY), await redis.hgetall(STATS_KEY)
        lines.append(f"{PUBLISHED_KEY} {published}; {STATS_KEY} {stats}")
        last = await redis.xrevrange(ALL_EVENTS, count=1)
        lines.append(f"{ALL_EVENTS}: length {await redis.xlen(ALL_EVENTS)}, last {last[0][0] if last else None}")
        for group in await redis.xinfo_groups(ALL_EVENTS):
            lines.append(
                f"  group {group['name']}: last-delivered {group['last-delivered-id']}, pending {group['pending']}"
            )
    finally:
        await redis.aclose()
    return "\n".join(lines)
