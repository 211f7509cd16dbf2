"""The connection pool pings a connection before use only after it sat idle (models/db.py): a connection the
server dropped while idle is replaced unseen; one used a moment ago goes straight to work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import db


async def _backend_pid(engine: AsyncEngine) -> int:
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


@asynccontextmanager
async def _pool_whose_connection_died(database_url: str) -> AsyncIterator[tuple[AsyncEngine, int]]:
    """A pool of one connection, used once and then terminated by the server: (the engine, that backend's pid)."""
    engine = db.make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        first = await _backend_pid(engine)
        await _terminate(database_url, first)
        yield engine, first
    finally:
        await engine.dispose()


async def test_a_connection_dropped_while_idle_is_replaced_before_use(database_url, schema, monkeypatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    async with _pool_whose_connection_died(database_url) as (engine, first):
        assert await _backend_pid(engine) != first  # no error: the ping found it dead, the pool connected anew


async def test_a_connection_used_a_moment_ago_is_not_pinged(database_url, schema, monkeypatch) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    async with _pool_whose_connection_died(database_url) as (engine, first):
        # Not pinged, so its first statement meets the dead connection; the pool then opens a new one.
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(engine)
        assert failed.value.connection_invalidated
        assert await _backend_pid(engine) != first
