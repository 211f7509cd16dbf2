"""`prognet events replay`: rebuild a read model from domain_events (the source of truth) and swap it in.

1. Keys: the rows to rebuild (tenant ids for the tenant overview, user ids for the user profile): all of them,
   or those with events of `--tenant`, or with events since `--since`.
2. In one REPEATABLE READ snapshot, every event of those keys is applied, in id order, to fresh temporary copies
   of the projection's tables (the live projector keeps writing the live tables meanwhile).
3. Swap, in one transaction that locks the live tables against the projector (EXCLUSIVE: readers go on):
   events the projector applied live since the rebuild began that the snapshot did not see are applied to the
   copies too; the keys' live rows are replaced by the copies' rows; every replayed event is recorded in
   `rm_applied`, so the projector skips those it has not reached yet and carries on after them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.db import make_engine
from models.read_models import MEMBERSHIP_EVENTS, PROJECTIONS, Projection, event_from_row

Progress = Callable[[int, int], None]  # (done, total)

# per projection: the key of a domain_events row, and of a row of its tables
EVENT_KEY = {
    "tenant_overview": "tenant_id::text",
    "user_profile": "coalesce(user_id::text, CASE WHEN type = 'member.added' THEN aggregate_id "
    "ELSE payload->>'user_id' END)",
}
ROW_KEY = {"tenant_overview": "tenant_id", "user_profile": "user_id"}
# events that concern rows of many keys at once, replayed whatever the keys
ALWAYS = {"tenant_overview": "false", "user_profile": "type = 'tenant.discarded'"}

_COLUMNS = (
    "id AS seq, event_id, type, version, aggregate_type, aggregate_id, tenant_id, user_id, actor_id, workflow_id, "
    "occurred_at, payload"
)
BATCH = 500


async def replay(
    database_url: str,
    projection_name: str,
    *,
    tenant_id: uuid.UUID | None = None,
    since: datetime | None = None,
    progress: Progress | None = None,
) -> int:
    """Rebuild and swap; returns how many events were replayed."""
    projection = PROJECTIONS[projection_name]
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            # Platform work sees the whole log and may write read models; this connection is used for nothing else.
            await conn.execute(text("SELECT set_config('app.platform', 'on', false)"))
            copies = {t: f"rebuild_{t}" for t in projection.tables}
            started = await _prepare(conn, projection, copies, tenant_id, since)
            done = await _rebuild(conn, projection, copies, progress)
            await _swap(conn, projection, copies, started)
            return done
    finally:
        await engine.dispose()


async def _prepare(
    conn: AsyncConnection,
    projection: Projection,
    copies: dict[str, str],
    tenant_id: uuid.UUID | None,
    since: datetime | None,
) -> datetime:
    for live, copy in copies.items():
        await conn.execute(text(f"DROP TABLE IF EXISTS {copy}"))
        await conn.execute(text(f"CREATE TEMP TABLE {copy} (LIKE {live} INCLUDING DEFAULTS INCLUDING INDEXES)"))
    await conn.execute(text("DROP TABLE IF EXISTS rebuild_applied"))
    await conn.execute(text("CREATE TEMP TABLE rebuild_applied (event_id uuid PRIMARY KEY, seq bigint NOT NULL)"))
    await conn.execute(text("DROP TABLE IF EXISTS rebuild_keys"))
    await conn.execute(text("CREATE TEMP TABLE rebuild_keys (key text PRIMARY KEY)"))
    conditions = [f"{EVENT_KEY[projection.name]} IS NOT NULL"]
    if tenant_id is not None:
        conditions.append("tenant_id = :tenant")
    if since is not None:
        conditions.append("occurred_at >= :since")
    if tenant_id is not None or since is not None:
        await conn.execute(
            text(
                f"INSERT INTO rebuild_keys SELECT DISTINCT {EVENT_KEY[projection.name]} FROM domain_events "
                f"WHERE {' AND '.join(conditions)}"
            ),
            {"tenant": tenant_id, "since": since},
        )
    started = (await conn.execute(text("SELECT now()"))).scalar_one()
    await conn.commit()
    return started


def _scope(projection: Projection, scoped: bool) -> str:
    """Which domain_events rows the rebuild replays."""
    key = EVENT_KEY[projection.name]
    if scoped:
        return f"({key} IN (SELECT key FROM rebuild_keys) OR {ALWAYS[projection.name]})"
    if projection.name == "user_profile":
        return "(user_id IS NOT NULL OR type IN :memberships)"
    return "tenant_id IS NOT NULL"


def _query(sql: str, scope: str) -> TextClause:
    statement = text(sql)
    if ":memberships" in scope:
        statement = statement.bindparams(bindparam("memberships", expanding=True))
    return statement


async def _rebuild(
    conn: AsyncConnection, projection: Projection, copies: dict[str, str], progress: Progress | None
) -> int:
    await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    scoped = bool((await conn.execute(text("SELECT count(*) FROM rebuild_keys"))).scalar_one())
    scope = _scope(projection, scoped)
    params: dict[str, object] = {"memberships": list(MEMBERSHIP_EVENTS)}
    total = (
        await conn.execute(_query(f"SELECT count(*) FROM domain_events WHERE {scope}", scope), params)
    ).scalar_one()
    done, last = 0, 0
    if progress:
        progress(0, total)
    while True:
        rows = (
            (
                await conn.execute(
                    _query(
                        f"SELECT {_COLUMNS} FROM domain_events WHERE {scope} AND id > :last ORDER BY id LIMIT {BATCH}",
                        scope,
                    ),
                    {**params, "last": last},
                )
            )
            .mappings()
            .all()
        )
        if not rows:
            break
        for row in rows:
            event = event_from_row(dict(row))
            await projection.apply(conn, event, copies)
            await conn.execute(
                text("INSERT INTO rebuild_applied VALUES (:e, :s) ON CONFLICT DO NOTHING"),
                {"e": event.event_id, "s": event.seq},
            )
            last = event.seq
        done += len(rows)
        if progress:
            progress(done, total)
    await conn.commit()
    return done


async def _swap(conn: AsyncConnection, projection: Projection, copies: dict[str, str], started: datetime) -> None:
    scoped = bool((await conn.execute(text("SELECT count(*) FROM rebuild_keys"))).scalar_one())
    scope = _scope(projection, scoped)
    params: dict[str, object] = {"memberships": list(MEMBERSHIP_EVENTS), "p": projection.name, "started": started}
    await conn.execute(text(f"LOCK TABLE {', '.join(projection.tables)} IN EXCLUSIVE MODE"))
    missed = (
        (
            await conn.execute(
                _query(
                    f"SELECT {_COLUMNS} FROM domain_events WHERE {scope} AND event_id IN ("
                    "SELECT a.event_id FROM rm_applied a WHERE a.projection = :p AND a.applied_at >= :started "
                    "AND NOT EXISTS (SELECT 1 FROM rebuild_applied r WHERE r.event_id = a.event_id)) ORDER BY id",
                    scope,
                ),
                params,
            )
        )
        .mappings()
        .all()
    )
    for row in missed:
        event = event_from_row(dict(row))
        await projection.apply(conn, event, copies)
        await conn.execute(text("INSERT INTO rebuild_applied VALUES (:e, :s)"), {"e": event.event_id, "s": event.seq})
    key = ROW_KEY[projection.name]
    for live, copy in copies.items():
        if scoped:
            where = f"{key}::text IN (SELECT key FROM rebuild_keys)"
            await conn.execute(text(f"DELETE FROM {live} WHERE {where}"))
            await conn.execute(text(f"INSERT INTO {live} SELECT * FROM {copy} WHERE {where}"))
        else:
            await conn.execute(text(f"DELETE FROM {live}"))
            await conn.execute(text(f"INSERT INTO {live} SELECT * FROM {copy}"))
    await conn.execute(
        text(
            "INSERT INTO rm_applied (projection, event_id, seq) SELECT :p, event_id, seq FROM rebuild_applied "
            "ON CONFLICT DO NOTHING"
        ),
        {"p": projection.name},
    )
    await conn.commit()
