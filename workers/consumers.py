"""The shipped stream consumers: the read-model projector and the cache invalidator (`prognet consume`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from models.db import make_engine, transaction
from models.event_stream import StreamEvent, backbone_client
from models.read_models import (
    INVALIDATE,
    PROJECTIONS,
    UnsupportedVersion,
    cache_floor_key,
    cache_key,
    live_tables,
    mark_applied,
)
from prognet import telemetry
from prognet.settings import Settings
from workers.consumer import Consumer, ConsumerConfig, Handler, Park

log = logging.getLogger("prognet.consumers")

PROJECTOR = "projector"
CACHE_INVALIDATOR = "cache-invalidator"
FLOOR_TTL_MS = 600_000  # ten minutes: beyond the cache TTLs and any projector lag worth caching through


def consumer_config(settings: Settings, name: str) -> ConsumerConfig:
    return ConsumerConfig(
        name=name,
        partitions=settings.consumer_partitions,
        lease_seconds=settings.consumer_lease_seconds,
        max_attempts=settings.consumer_max_attempts,
    )


async def project(engine: AsyncEngine, event: StreamEvent) -> None:
    """Apply one event to every read model it concerns, in one transaction with its `rm_applied` marks.

    Each projection's tables are locked (ROW EXCLUSIVE, what any write takes) before anything else, so a
    replay's swap (EXCLUSIVE) and this transaction queue up cleanly instead of deadlocking."""
    try:
        async with transaction(engine, platform=True) as session:
            conn = await session.connection()
            for projection in PROJECTIONS.values():
                if not projection.concerns(event):
                    continue
                await conn.execute(text(f"LOCK TABLE {', '.join(projection.tables)} IN ROW EXCLUSIVE MODE"))
                if await mark_applied(conn, projection.name, event):
                    await projection.apply(conn, event, live_tables(projection))
    except UnsupportedVersion as exc:
        raise Park(f"unsupported event version: {exc}") from None


def cache_keys(event: StreamEvent) -> list[str]:
    """The cached read models an event can change."""
    keys = []
    if event.tenant_id is not None:
        keys.append(cache_key("tenant_overview", event.tenant_id))
    users = {event.user_id} if event.user_id else set()
    if event.type == "member.added":
        users.add(uuid.UUID(event.aggregate_id))
    elif event.type.startswith("member.") and event.payload.get("user_id"):
        users.add(uuid.UUID(event.payload["user_id"]))
    keys += [cache_key("user_profile", user) for user in sorted(users, key=str)]
    return keys


class CacheInvalidator:
    """Deletes the cache entries an event makes stale and raises their floor to the event's position, so a reader
    that read the row before the projector applied the event (however long the projector lags) cannot cache it
    again: only a row at or above the floor is stored (api/read_models.py)."""

    def __init__(self, cache: Redis) -> None:
        self._invalidate = cache.register_script(INVALIDATE)

    async def __call__(self, event: StreamEvent) -> None:
        keys = cache_keys(event)
        if keys:
            pairs = [k for key in keys for k in (key, cache_floor_key(key))]
            await self._invalidate(keys=pairs, args=[event.seq, FLOOR_TTL_MS])


def _stop_all(consumers: list[Consumer]) -> None:
    for consumer in consumers:
        consumer.stop()


async def run_consumers(settings: Settings, *, names: tuple[str, ...] = (PROJECTOR, CACHE_INVALIDATOR)) -> None:
    """`prognet consume`: the projector and the cache invalidator until SIGTERM/SIGINT (a clean stop: the current
    entry finishes and the leases are given back)."""
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    telemetry.configure_process(telemetry.CONSUMERS, settings)
    engine = make_engine(settings.database_url)
    streams = backbone_client(settings.redis_target, socket_connect_timeout=2, socket_timeout=10)
    cache = Redis.from_url(
        settings.cache_redis_url or settings.redis_target, socket_connect_timeout=2, socket_timeout=5
    )

    async def projector(event: StreamEvent) -> None:
        await project(engine, event)

    handlers: dict[str, Handler] = {PROJECTOR: projector, CACHE_INVALIDATOR: CacheInvalidator(cache)}
    consumers = [Consumer(streams, consumer_config(settings, name), handlers[name]) for name in names]
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, _stop_all, consumers)
    log.info("consuming events:all as %s", ", ".join(c.copy_id for c in consumers))
    try:
        await asyncio.gather(*(c.run() for c in consumers))
    finally:
        await streams.aclose()
        await cache.aclose()
        await engine.dispose()
