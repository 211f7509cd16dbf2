"""The outbox relay on the session's real PostgreSQL and Redis: commit order, rollbacks, crashes, two relays, NOTIFY.

Test events are inserted as the database owner (type `test.relay`) and found in `events:all` by event id; events
of other tests that are still unpublished go out too and are ignored here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.event_stream import ALL_EVENTS, StreamEvent, backbone_client, tenant_stream, user_stream
from prognet_dev import EmbeddedStack, free_port
from prognet_dev.components import redis_server_binary
from relay.relay import (
    FETCH,
    LOCK_KEY,
    PUBLISHED_KEY,
    STATS_KEY,
    Leader,
    Position,
    Relay,
    StreamRewound,
    stream_event,
)

REPO = Path(__file__).resolve().parents[2]
INSERT = """
INSERT INTO domain_events (event_id, type, aggregate_type, aggregate_id, tenant_id, user_id, payload, occurred_at)
VALUES ($1, 'test.relay', 'test', $2, $3, $4, $5::jsonb, now())
"""


@pytest.fixture
async def owner(services: EmbeddedStack) -> AsyncIterator[asyncpg.Connection]:
    assert services.postgres_dsn
    conn = await asyncpg.connect(services.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def redis(services: EmbeddedStack) -> AsyncIterator[Redis]:
    client = Redis.from_url(services.redis_url or "")
    yield client
    await client.aclose()


@pytest.fixture
def relay(services: EmbeddedStack, redis: Redis) -> Relay:
    assert services.database_url
    return Relay(services.database_url, redis, batch_size=50)


async def insert(
    conn: asyncpg.Connection, n: int = 1, *, tenant: uuid.UUID | None = None, user: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """`n` events in one transaction (the caller's, if one is open)."""
    ids = [uuid.uuid4() for _ in range(n)]
    await conn.executemany(INSERT, [(i, str(i), tenant, user, json.dumps({"n": k})) for k, i in enumerate(ids)])
    return ids


async def published(redis: Redis, stream: str = ALL_EVENTS) -> list[uuid.UUID]:
    """Event ids in `stream`, in stream order. The stack is shared by the test modules one pytest worker runs, in
    any order: an entry that is no event (test_webhooks adds one on purpose) is not the relay's."""
    entries = await redis.xrange(stream)
    return [StreamEvent.from_fields(fields).event_id for _, fields in entries if b"event_id" in fields]


async def ours(redis: Redis, ids: list[uuid.UUID], stream: str = ALL_EVENTS) -> list[uuid.UUID]:
    wanted = set(ids)
    return [i for i in await published(redis, stream) if i in wanted]


async def commit_order(owner: asyncpg.Connection, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    rows = await owner.fetch("SELECT event_id FROM domain_events WHERE event_id = ANY($1) ORDER BY txid, id", ids)
    return [r["event_id"] for r in rows]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def leading(relay: Relay) -> AsyncIterator[Leader]:
    conn = await relay.connect()
    try:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY), "another relay holds the lock"
        yield await relay.take_lead(conn)
    finally:
        await conn.close()


async def test_a_late_commit_is_not_skipped_and_goes_out_before_the_later_transactions(owner, services, redis, relay):
    tenant, user = uuid.uuid4(), uuid.uuid4()
    held = await asyncpg.connect(services.postgres_dsn)
    try:
        tx = held.transaction()
        await tx.start()
        [late] = await insert(held, tenant=tenant, user=user)  # its transaction's xid is older than the next two
        [first] = await insert(owner, tenant=tenant)
        [second] = await insert(owner)
        async with leading(relay) as leader:
            await leader.drain()
            # committed, but behind the barrier of the open transaction: not published yet
            assert await ours(redis, [late, first, second]) == []
            await tx.commit()
            await leader.drain()
    finally:
        await held.close()
    # exactly once each, in (txid, id) order: the late transaction first
    assert await ours(redis, [late, first, second]) == [late, first, second]
    assert await commit_order(owner, [late, first, second]) == [late, first, second]
    assert await ours(redis, [late, first, second], tenant_stream(tenant)) == [late, first]
    assert await ours(redis, [late, first, second], user_stream(user)) == [late]


async def test_a_batch_whose_transactions_cross_a_power_of_ten_is_read_in_transaction_order(owner):
    """Transaction ids 8..11 (written by hand, below every real event's, and rolled back): the relay's read
    returns them by transaction id, not as text ("10" < "8")."""
    assert await owner.fetchval("SELECT coalesce(min(txid)::text::bigint, 12) FROM domain_events") > 11
    tx = owner.transaction()
    await tx.start()
    try:
        for txid in (11, 10, 9, 8):
            await owner.execute(
                "INSERT INTO domain_events (event_id, type, aggregate_type, aggregate_id, payload, occurred_at, txid) "
                "VALUES ($1, 'test.relay', 'test', 'power-of-ten', '{}', now(), $2::text::xid8)",
                uuid.uuid4(),
                str(txid),
            )
        rows = await owner.fetch(FETCH, "7", 0, 4)
    finally:
        await tx.rollback()
    assert [int(r["txid"]) for r in rows] == [8, 9, 10, 11]


async def test_a_rolled_back_event_is_never_published(owner, services, redis, relay):
    doomed = await asyncpg.connect(services.postgres_dsn)
    try:
        tx = doomed.transaction()
        await tx.start()
        [rolled_back] = await insert(doomed)
        [kept] = await insert(owner)
        await tx.rollback()
    finally:
        await doomed.close()
    async with leading(relay) as leader:
        await leader.drain()
    assert await ours(redis, [rolled_back, kept]) == [kept]


async def test_a_batch_published_but_not_saved_is_not_published_again(owner, redis, relay):
    ids = await insert(owner, 5)
    async with leading(relay) as leader:
        await leader.drain()
    more = await insert(owner, 5)
    async with leading(relay) as crashed:  # publishes a batch, then "dies" before saving its position
        saved = crashed.position
        rows = await crashed.conn.fetch(FETCH, str(saved.txid), saved.seq, 1000)
        await crashed._xadd([stream_event(r) for r in rows], Position(int(rows[-1]["txid"]), rows[-1]["id"]))
        assert await crashed.conn.fetchval("SELECT seq FROM relay_position") == saved.seq
    async with leading(relay) as successor:  # reconciles with the stream's tail
        assert successor.position > saved
        assert await successor.drain() == 0
    assert await ours(redis, ids + more) == ids + more


class ForgetfulRedis:
    """A Redis of its own that really loses acknowledged writes: no AOF, and `restart` kills it and starts it
    again from its last snapshot (what a restart from an older AOF or backup looks like to the relay)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.client = backbone_client(f"redis://127.0.0.1:{self.port}/0", socket_timeout=5, socket_connect_timeout=2)

    async def start(self) -> None:
        self.data_dir.mkdir(exist_ok=True)
        args = ["--port", str(self.port), "--dir", str(self.data_dir), "--appendonly", "no", "--save", ""]
        self.process = await asyncio.create_subprocess_exec(
            str(redis_server_binary()), *args, stdout=asyncio.subprocess.DEVNULL
        )
        await eventually(self._answers, what="the forgetful Redis to start")

    async def restart(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()
        await self.client.connection_pool.disconnect()
        await self.start()

    async def stop(self) -> None:
        await self.client.aclose()
        if self.process is not None:
            await stop_all(self.process)

    async def _answers(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (OSError, RedisError):
            return False


async def test_batches_redis_lost_are_published_again_in_order(owner, services, tmp_path):
    forgetful = ForgetfulRedis(tmp_path / "redis")
    await forgetful.start()
    before = await owner.fetchrow("SELECT txid::text AS txid, seq FROM relay_position")
    try:
        redis, relay = forgetful.client, Relay(services.database_url, forgetful.client, batch_size=50)
        kept = await insert(owner, 5)
        async with leading(relay) as leader:
            await leader.drain()
            await redis.save()  # the state Redis will come back with
            lost = await insert(owner, 5)
            await leader.drain()
            assert await ours(redis, kept + lost) == kept + lost
            await forgetful.restart()
            assert await ours(redis, kept + lost) == kept  # acknowledged, saved as published in PostgreSQL, gone
            with pytest.raises(StreamRewound):  # noticed with nothing new to publish (an idle poll) ...
                await leader.drain()
            after = await insert(owner, 5)
            with pytest.raises(StreamRewound):  # ... and before anything is published after the gap
                await leader.drain()
        # somebody else's entry on the tail (an old event's seq) moves nothing: only relay:published counts
        await redis.xadd(ALL_EVENTS, _foreign_event(seq=1).to_fields())
        async with leading(relay) as successor:  # what the relay's loop does next: take the lead again
            await successor.drain()
        assert await ours(redis, kept + lost + after) == kept + lost + after  # once each, in order
        assert int(await redis.hget(STATS_KEY, "republished") or 0) >= len(lost)  # /metrics shows it
        # a Redis without relay:published (flushed, or written by an older relay): the tail moves nothing down
        await redis.delete(PUBLISHED_KEY)
        await redis.xadd(ALL_EVENTS, _foreign_event(seq=1).to_fields())
        async with leading(relay) as next_leader:
            assert await next_leader.drain() == 0
        assert await ours(redis, kept + lost + after) == kept + lost + after
    finally:
        await forgetful.stop()
        # the session's Redis never saw what went to this one: leave the shared cursor where its stream is
        await owner.execute(
            "UPDATE relay_position SET txid = $1::text::xid8, seq = $2 WHERE name = 'events:all'",
            before["txid"],
            before["seq"],
        )


def _foreign_event(seq: int) -> StreamEvent:
    return StreamEvent(
        seq=seq, event_id=uuid.uuid4(), type="test.foreign", version=1, aggregate_type="test", aggregate_id="x",
        tenant_id=None, user_id=None, actor_id=None, workflow_id=None, occurred_at=datetime.now(UTC), payload={},
    )  # fmt: skip


# --- `prognet relay` processes ---------------------------------------------------------------------------------


async def start_relay(services: EmbeddedStack, log: Path, **env: str) -> asyncio.subprocess.Process:
    environment = services.env() | {"LOG_LEVEL": "INFO"} | env
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "prognet.cli", "relay", env=environment, cwd=REPO, stdout=out, stderr=out
        )


async def leader_pid(redis: Redis) -> int | None:
    leader = await redis.hget(STATS_KEY, "leader")
    return int(leader.decode().split(":")[1]) if leader else None


async def lock_holders(owner: asyncpg.Connection) -> tuple[int, int]:
    """(sessions holding the relay lock, sessions waiting for it)"""
    row = await owner.fetchrow(
        "SELECT count(*) FILTER (WHERE granted) AS held, count(*) FILTER (WHERE NOT granted) AS waiting "
        "FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 1",
        LOCK_KEY >> 32,
        LOCK_KEY & 0xFFFFFFFF,
    )
    return row["held"], row["waiting"]


async def stop_all(*processes: asyncio.subprocess.Process) -> None:
    for process in processes:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(owner, services, redis, tmp_path):
    produced: list[uuid.UUID] = []
    for _ in range(40):  # a backlog, so the relay is busy publishing batches when it is killed
        async with owner.transaction():
            produced.extend(await insert(owner, 10))

    async def produce() -> None:  # and 20 more transactions while it runs, dies and restarts
        for _ in range(20):
            async with owner.transaction():
                produced.extend(await insert(owner, 10))
            await asyncio.sleep(0.01)

    process = await start_relay(services, tmp_path / "relay.log", RELAY_BATCH_SIZE="7")
    producer = asyncio.create_task(produce())
    try:
        for published_before_kill in (50, 250):  # twice, each time in the middle of the backlog
            await eventually(
                lambda n=published_before_kill: _published_some(redis, produced, n), what="the relay to publish"
            )
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
            process = await start_relay(services, tmp_path / "relay.log", RELAY_BATCH_SIZE="7")
        await producer
        # a restarted relay first waits out the dead leader's session: generous on a loaded machine
        await eventually(lambda: _published_all(redis, produced), timeout=60, what="every event to be published")
        # a graceful stop after the crashes: SIGTERM, exit 0
        await eventually(lambda: _is(leader_pid(redis), process.pid), what="the restarted relay to lead")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        producer.cancel()
        await stop_all(process)
    stream = await ours(redis, produced)
    assert len(stream) == len(set(stream)) == 600  # no duplicate, no gap
    assert stream == await commit_order(owner, produced)


async def _published_some(redis: Redis, ids: list[uuid.UUID], n: int) -> bool:
    return len(await ours(redis, ids)) >= n


async def _published_all(redis: Redis, ids: list[uuid.UUID]) -> bool:
    return len(set(await ours(redis, ids))) == len(ids)


async def test_two_relays_one_leads_the_other_takes_over(owner, services, redis, tmp_path):
    first = await start_relay(services, tmp_path / "first.log")
    second: asyncio.subprocess.Process | None = None
    try:
        await eventually(lambda: _is(leader_pid(redis), first.pid), what="the first relay to lead")
        second = await start_relay(services, tmp_path / "second.log")
        await eventually(lambda: _is(lock_holders(owner), (1, 1)), what="the second relay to stand by")
        before = await insert(owner, 100)
        await eventually(lambda: _published_all(redis, before), what="the leader to publish")
        assert await leader_pid(redis) == first.pid

        first.send_signal(signal.SIGKILL)
        await first.wait()
        after = await insert(owner, 100)
        await eventually(lambda: _is(leader_pid(redis), second.pid), what="the second relay to take over")
        await eventually(lambda: _published_all(redis, after), what="the new leader to publish")
        assert await lock_holders(owner) == (1, 0)
    finally:
        await stop_all(first, *([second] if second else []))
    stream = await ours(redis, before + after)
    assert stream == before + after  # once each, in order


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


# --- wake-up, lag, `prognet events tail` ------------------------------------------------------------------------


async def test_notify_wakes_the_relay_within_a_second_and_tail_prints_it(owner, services, redis, relay, tmp_path):
    relay.poll_seconds = 30.0  # so only a notification can explain a prompt publication
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    tenant = uuid.uuid4()
    tail = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "prognet.cli", "events", "tail", "--tenant", str(tenant), "--count", "2"),
        env=services.env(),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(
            lambda: _is(redis.hget(STATS_KEY, "leader"), relay.identity.encode()), what="the relay to lead"
        )
        assert tail.stderr is not None
        banner = await asyncio.wait_for(tail.stderr.readline(), 10)
        assert banner.decode().startswith(f"tailing {tenant_stream(tenant)}")
        await asyncio.sleep(0.2)  # the relay is idle in its wait (poll: 30 s)

        newest = await redis.xrevrange(ALL_EVENTS, count=1)
        since = newest[0][0] if newest else b"0-0"
        lags = []
        for _ in range(3):
            committed = time.monotonic()
            [event_id] = await insert(owner, tenant=tenant)
            found = False
            while not found:
                response = await redis.xread({ALL_EVENTS: since}, block=2000)
                assert response, "nothing published within 2 s"
                for entry_id, fields in response[0][1]:
                    since = entry_id
                    found = found or StreamEvent.from_fields(fields).event_id == event_id
            lags.append(time.monotonic() - committed)
        print(f"commit-to-stream lag (NOTIFY): {', '.join(f'{lag * 1000:.1f} ms' for lag in lags)}")
        assert max(lags) < 1.0
        stats = await redis.hgetall(STATS_KEY)
        assert float(stats[b"last_lag_ms"]) < 1000 and float(stats[b"lag_p99_ms"]) >= 0

        out, _ = await asyncio.wait_for(tail.communicate(), 10)
        lines = out.decode().splitlines()
        assert len(lines) == 2 and all("test.relay v1  test:" in line for line in lines)
        assert all(f"tenant={tenant}" in line for line in lines)
        assert tail.returncode == 0
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            tail.kill()
        await asyncio.wait_for(task, 10)  # a graceful stop: the loop returns
    assert task.done() and task.exception() is None
