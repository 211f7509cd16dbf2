"""The connection pool pings a connection before use only after it sat idle (models/db.py): a connection the
server dropped while idle is replaced unseen; one used a moment ago goes straight to work."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from models import db


async def _backend_pid(engine) -> int:
    async with db.transaction(engine) as session:
        return (await (await session.connection()).execute(text("select pg_backend_pid()"))).scalar_one()


async def _terminate(database_url: str, pid: int) -> None:
    killer = db.make_engine(database_url)
    try:
        async with db.transaction(killer) as session:
            conn = await session.connection()
            assert (await conn.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})).scalar_one()
    finally:
        await killer.dispose()


async def test_a_connection_dropped_while_idle_is_replaced_before_use(database_url, schema, monkeypatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    engine = db.make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        first = await _backend_pid(engine)
        await _terminate(database_url, first)
        assert await _backend_pid(engine) != first  # no error: the ping found it dead, the pool connected anew
    finally:
        await engine.dispose()


async def test_a_connection_used_a_moment_ago_is_not_pinged(database_url, schema, monkeypatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    engine = db.make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        first = await _backend_pid(engine)
        await _terminate(database_url, first)
        # Not pinged, so its first statement meets the dead connection; the pool then opens a new one.
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(engine)
        assert failed.value.connection_invalidated
        assert await _backend_pid(engine) != first
    finally:
        await engine.dispose()
