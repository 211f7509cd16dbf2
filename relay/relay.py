"""The outbox relay: copies every committed `domain_events` row to Redis Streams (`models.event_stream`).

Order. Events go out in (txid, id) order: by the writing transaction's xid8, then by insert order inside it.
A row is read only once `txid < pg_snapshot_xmin(pg_current_snapshot())`, i.e. once no transaction that could
still precede it is running: all rows below that barrier are final (committed, or rolled back and invisible
forever), and no new row can ever appear below it (xids only grow). So the position is one cursor, the
(txid, id) of the last published event, and "everything after the cursor and below the barrier" is exactly
what is left to publish: a late-committing transaction holds back the events after it rather than being
skipped, and is published first, before the later xids that committed while it was open. Every transaction's
events are contiguous, and this order is reproducible from the table (`ORDER BY txid, id`), e.g. for a replay.
Caveat: xids are cluster-wide, so a long-running writing transaction anywhere on the server delays (never loses)
publication.

Durability. One batch is one Redis MULTI/EXEC (every stream's XADD and `relay:published`, the batch's position,
together), then the cursor is saved in `relay_position`. `relay:published` is what Redis holds: a relay taking the lead
moves the cursor to it, up after a crash between a batch and its save (nothing is published twice), down when Redis
lost writes it had acknowledged (a restart from an older AOF or snapshot; with `appendfsync everysec` a kill can
drop the last second), and those events go out again, in order (consumers are idempotent by event id). Before each
batch and at each idle poll the leader checks that `relay:published` still names its own cursor; when it does not,
it takes the lead again. A Redis without the key (new, flushed) only lets the stream's last entry move the cursor
up, as anyone may XADD to the stream; one that lost everything is published to from the saved cursor on.

One leader. Relays take the session-level advisory lock LOCK_KEY on their connection (`pg_advisory_lock`,
blocking: standbys wait in it and take over the moment the leader's session ends). Each new leader increments
the Redis key `relay:epoch` and publishes only while it still holds its epoch (WATCH): a leader whose
connection died but which has not noticed yet cannot add a batch after its successor took over.

Wake-up. A statement-level trigger NOTIFYs `domain_events` at each commit that inserted events; a poll every
RELAY_POLL_SECONDS catches a missed notification and events that were held back by the barrier.

Lag. Per batch, now - occurred_at of each event (occurred_at is when the event was recorded, so the figure
includes the writing transaction's remaining time). The last batch's maximum and the p50/p99 of the last
1000 events are kept in the Redis hash `relay:stats` (with the leader, the cursor, a published count and a count of
events published again after Redis lost them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import trace
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from models.event_stream import ALL_EVENTS, StreamEvent, backbone_client
from prognet import telemetry
from prognet.settings import Settings

log = logging.getLogger("prognet.relay")
tracer = trace.get_tracer(__name__)

LOCK_KEY = 0x70726F676E657401  # pg_advisory_lock key of the relay leader: "prognet" in ASCII, then 0x01
CHANNEL = "domain_events"  # NOTIFY channel of migration 0008's trigger
POSITION_NAME = ALL_EVENTS  # the relay_position row
EPOCH_KEY = "relay:epoch"
PUBLISHED_KEY = "relay:published"  # the cursor of the last batch in the streams, written with that batch
STATS_KEY = "relay:stats"
LAG_WINDOW = 1000  # events the p50/p99 lag is computed over
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0  # backoff after an outage, doubling

# ORDER BY names the table's columns (e.txid): a bare `txid` would mean the text output column, and "1000" sorts
# before "999", so a batch whose transactions cross a power of ten would go out of order.
FETCH = """
SELECT e.id, e.txid::text AS txid, e.event_id, e.type, e.version, e.aggregate_type, e.aggregate_id, e.tenant_id,
       e.user_id, e.actor_id, e.workflow_id, e.occurred_at, e.payload::text AS payload
FROM domain_events e
WHERE (e.txid, e.id) > ($1::text::xid8, $2) AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY e.txid, e.id
LIMIT $3
"""
LOAD_POSITION = "SELECT txid::text AS txid, seq FROM relay_position WHERE name = $1"
SAVE_POSITION = """
UPDATE relay_position SET txid = $2::text::xid8, seq = $3, updated_at = now()
WHERE name = $1 AND (txid, seq) < ($2::text::xid8, $3)
"""
REWIND_POSITION = "UPDATE relay_position SET txid = $2::text::xid8, seq = $3, updated_at = now() WHERE name = $1"
COUNT_BETWEEN = """
SELECT count(*) FROM domain_events
WHERE (txid, id) > ($1::text::xid8, $2) AND (txid, id) <= ($3::text::xid8, $4)
"""

# What a lost connection or a server that is down looks like: log, back off, retry.
TRANSIENT = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError)


class LostLeadership(Exception):
    """Another relay took the lead (our epoch is gone): stop publishing."""


class StreamRewound(Exception):
    """Redis no longer holds this leader's last batches (it lost acknowledged writes): take the lead again."""


@dataclass(frozen=True, order=True)
class Position:
    txid: int
    seq: int

    def __str__(self) -> str:
        return f"{self.txid}:{self.seq}"


def plain_dsn(database_url: str) -> str:
    """asyncpg's DSN from a SQLAlchemy URL (`postgresql+asyncpg://…` → `postgresql://…`)."""
    scheme, sep, rest = database_url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def stream_event(row: asyncpg.Record) -> StreamEvent:
    return StreamEvent(
        seq=row["id"],
        event_id=row["event_id"],
        type=row["type"],
        version=row["version"],
        aggregate_type=row["aggregate_type"],
        aggregate_id=row["aggregate_id"],
        tenant_id=row["tenant_id"],
        user_id=row["user_id"],
        actor_id=row["actor_id"],
        workflow_id=row["workflow_id"],
        occurred_at=row["occurred_at"],
        payload=json.loads(row["payload"]),
    )


class Leader:
    """Publishing under the advisory lock held by `conn`, as epoch `epoch`, from `position` on."""

    def __init__(self, relay: Relay, conn: asyncpg.Connection, epoch: int, position: Position) -> None:
        self.relay = relay
        self.conn = conn
        self.epoch = epoch
        self.position = position
        self.lags: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW)

    async def publish_batch(self) -> int:
        """Publish up to batch_size events that are past the barrier; returns how many."""
        rows = await self.conn.fetch(
            FETCH, str(self.position.txid), self.position.seq, self.relay.batch_size, timeout=30
        )
        if not rows:
            # idle: still notice a Redis that came back without our last batches, not only at the next event
            self._check_published(await self.relay.redis.get(PUBLISHED_KEY))
            return 0
        events = [stream_event(row) for row in rows]
        last = Position(int(rows[-1]["txid"]), rows[-1]["id"])
        # a trace per published batch; the empty polls before it are not traced (telemetry's sampler)
        with tracer.start_as_current_span("relay.publish", attributes={"relay.events": len(events)}):
            await self._xadd(events, last)
            self.position = last
            await self.conn.execute(SAVE_POSITION, POSITION_NAME, str(last.txid), last.seq, timeout=30)
        return len(events)

    async def drain(self) -> int:
        """Publish everything that is past the barrier now."""
        total = 0
        while count := await self.publish_batch():
            total += count
        return total

    def _check_published(self, published: bytes | str | None) -> None:
        if published not in (str(self.position), str(self.position).encode()):
            raise StreamRewound(
                f"Redis has the stream up to {published!r}, this leader published up to {self.position}"
            )

    async def _xadd(self, events: list[StreamEvent], last: Position) -> None:
        redis = self.relay.redis
        now = datetime.now(UTC)
        batch_lags = [(now - e.occurred_at).total_seconds() for e in events]
        self.lags.extend(batch_lags)
        ranked = sorted(self.lags)
        stats: dict[Any, str | int | float] = {
            "leader": self.relay.identity,
            "position": str(last),
            "last_batch": len(events),
            "last_lag_ms": round(max(batch_lags) * 1000, 1),
            "lag_p50_ms": round(ranked[len(ranked) // 2] * 1000, 1),
            "lag_p99_ms": round(ranked[min(len(ranked) - 1, int(len(ranked) * 0.99))] * 1000, 1),
            "published_at": now.isoformat(),
        }
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.watch(EPOCH_KEY)
            epoch, published = await pipe.mget(EPOCH_KEY, PUBLISHED_KEY)
            if int(epoch or 0) != self.epoch:
                raise LostLeadership(f"epoch {self.epoch} is over")
            self._check_published(published)
            pipe.multi()
            for event in events:
                fields: Any = event.to_fields()
                for stream in event.streams():
                    pipe.xadd(stream, fields, maxlen=self.relay.maxlen, approximate=True)
            pipe.set(PUBLISHED_KEY, str(last))
            pipe.hset(STATS_KEY, mapping=stats)
            pipe.hincrby(STATS_KEY, "published", len(events))
            try:
                await pipe.execute()
            except WatchError:
                raise LostLeadership(f"epoch {self.epoch} ended during a batch") from None
        log.debug("published %d events up to %s, lag %.1f ms", len(events), last, stats["last_lag_ms"])


class Relay:
    def __init__(
        self,
        database_url: str,
        redis: Redis,
        *,
        maxlen: int = 100_000,
        batch_size: int = 500,
        poll_seconds: float = 1.0,
    ) -> None:
        self.dsn = plain_dsn(database_url)
        self.redis = redis
        self.maxlen = maxlen
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.retry_delay = RETRY_FIRST_SECONDS

    async def connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn, timeout=10)
        # the session's own setting (not SET LOCAL): this connection reads every tenant's events (0008's policy)
        await conn.execute("SELECT set_config('app.platform', 'on', false)")
        return conn

    async def take_lead(self, conn: asyncpg.Connection) -> Leader:
        """On a connection that holds LOCK_KEY: a new epoch, and the cursor reconciled with what Redis holds.

        `relay:published`, written with every batch, names the last batch the streams still have: above the saved
        cursor after a crash between a batch and its save (move up), below it after Redis lost acknowledged
        batches (move down: they are published again). Without it (a new or flushed Redis, or one an older relay
        wrote) only the stream's last entry can move the cursor, and only up: anyone may XADD to the stream."""
        epoch = int(await self.redis.incr(EPOCH_KEY))  # first: fences out a predecessor that is still publishing
        row = await conn.fetchrow(LOAD_POSITION, POSITION_NAME)
        if row is None:
            raise RuntimeError("relay_position has no row for events:all: run `prognet migrate`")
        saved = Position(int(row["txid"]), row["seq"])
        # One connection from the reads to the write: a Redis that restarts in between fails the EXEC (it cannot
        # come back older and be told our position), and so does a successor's epoch.
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(EPOCH_KEY, PUBLISHED_KEY)
            current, published = await pipe.mget(EPOCH_KEY, PUBLISHED_KEY)
            if int(current or 0) != epoch:
                raise LostLeadership(f"epoch {epoch} ended while taking the lead")
            position = await self._event_position(conn, published)
            if position is None:
                tail: Any = await pipe.xrevrange(ALL_EVENTS, count=1)
                ahead = await self._event_position(conn, tail[0][1].get(b"seq") if tail else None)
                position = max(saved, ahead or saved)
                if position == saved and saved.seq:
                    log.warning("Redis has no record of this relay's batches: publishing from %s on", saved)
            lost = 0
            if position > saved:
                log.info("the stream is ahead of the saved position (%s): continuing after %s", saved, position)
                await conn.execute(SAVE_POSITION, POSITION_NAME, str(position.txid), position.seq)
            elif position < saved:
                lost = await conn.fetchval(COUNT_BETWEEN, str(position.txid), position.seq, str(saved.txid), saved.seq)
                log.warning(
                    "Redis lost %d events after %s (saved position %s): publishing them again", lost, position, saved
                )
                await conn.execute(REWIND_POSITION, POSITION_NAME, str(position.txid), position.seq)
            pipe.multi()
            pipe.set(PUBLISHED_KEY, str(position))
            pipe.hset(STATS_KEY, mapping={"leader": self.identity, "epoch": epoch, "position": str(position)})
            if lost:
                pipe.hincrby(STATS_KEY, "republished", lost)
            try:
                await pipe.execute()
            except WatchError:
                raise LostLeadership(f"epoch {epoch} ended while taking the lead") from None
        return Leader(self, conn, epoch, position)

    @staticmethod
    async def _event_position(conn: asyncpg.Connection, text: bytes | str | None) -> Position | None:
        """The position "txid:seq" (or a bare seq) in `text` if it names an event of this database: what Redis
        says is only believed when it matches the table."""
        try:
            txid, _, seq = (text.decode() if isinstance(text, bytes) else text or "").rpartition(":")
            position = Position(int(txid or 0), int(seq))
            if not (0 <= position.txid < 2**64 and 0 <= position.seq < 2**63):  # xid8, bigint
                raise ValueError(text)
        except ValueError:
            return None
        if position == Position(0, 0):
            return position  # nothing published yet
        found = await conn.fetchval("SELECT txid::text FROM domain_events WHERE id = $1", position.seq)
        if found is None or (txid and int(found) != position.txid):
            return None
        return Position(int(found), position.seq)

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by, lead, publish; reconnect with backoff after any outage; return once `stop` is set."""
        while not stop.is_set():
            try:
                await self._serve(stop)
            except (*TRANSIENT, LostLeadership, StreamRewound) as exc:
                log.warning("relay: %s: %s; retrying in %.1f s", type(exc).__name__, exc, self.retry_delay)
                await self._back_off(stop)
            except Exception:  # a process that must not die: say what happened, back off, start over
                log.exception("relay: unexpected error; retrying in %.1f s", self.retry_delay)
                await self._back_off(stop)

    async def _back_off(self, stop: asyncio.Event) -> None:
        await _wait(stop, self.retry_delay)
        self.retry_delay = min(self.retry_delay * 2, RETRY_MAX_SECONDS)

    async def _serve(self, stop: asyncio.Event) -> None:
        conn = await self.connect()
        try:
            log.info("relay %s: standing by for the leader lock (advisory lock %d)", self.identity, LOCK_KEY)
            if not await _unless_stopped(stop, conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)):
                return
            wake = asyncio.Event()
            await conn.add_listener(CHANNEL, lambda *_: wake.set())
            leader = await self.take_lead(conn)
            log.info("relay %s: leading (epoch %d) from %s", self.identity, leader.epoch, leader.position)
            while not stop.is_set():
                wake.clear()  # before reading: a commit from now on wakes the next wait
                published = await leader.publish_batch()
                self.retry_delay = RETRY_FIRST_SECONDS  # working: the next outage backs off from the start again
                if published == self.batch_size:
                    continue
                waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())}
                await asyncio.wait(waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            # closing the session releases the advisory lock: a standby takes over
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)
            if not conn.is_closed():
                conn.terminate()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[Any]) -> bool:
    """Await `work` unless `stop` is set first (then `work` is cancelled); True when `work` finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return False


async def run_relay(settings: Settings, stop: asyncio.Event) -> None:
    """`prognet relay`: the relay of DATABASE_URL and REDIS_URL until `stop` is set."""
    if not settings.database_url or not settings.redis_url:
        raise SystemExit("error: the relay needs DATABASE_URL and REDIS_URL")
    telemetry.configure_process(telemetry.RELAY, settings)
    redis = backbone_client(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        relay = Relay(
            settings.database_url,
            redis,
            maxlen=settings.event_stream_maxlen,
            batch_size=settings.relay_batch_size,
            poll_seconds=settings.relay_poll_seconds,
        )
        await relay.run(stop)
    finally:
        await redis.aclose()
    log.info("relay stopped")
