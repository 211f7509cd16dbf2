"""Stream consumers, CQRS read models, their cache and replay, on the session's real PostgreSQL and Redis.

Events are written to domain_events (as the activities do) and published to `events:all` by the test itself,
in the relay's format (`StreamEvent.to_fields()`): no relay runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select

from api.app import create_app
from models.db import transaction
from models.event_stream import ALL_EVENTS, StreamEvent, backbone_client
from models.events import record_event
from models.read_models import cache_floor_key, cache_key
from models.tables import DomainEvent
from prognet.settings import Settings
from prognet_dev import free_port
from tests.api.conftest import bearer, insert_tenant, insert_user, login
from workers.consumer import PARKED, Consumer, ConsumerConfig, parked, partition_of
from workers.consumers import CACHE_INVALIDATOR, PROJECTOR, CacheInvalidator, project
from workers.replay import replay

FAST = {"lease_seconds": 1.0, "retry_delay": 0.01, "block_seconds": 0.2}


async def emit(
    engine: AsyncEngine,
    redis: Redis,
    type: str,
    aggregate_type: str,
    aggregate_id: uuid.UUID | str,
    payload: dict[str, Any] | None = None,
    *,
    tenant_id: uuid.UUID | None = None,
    version: int = 1,
) -> StreamEvent:
    """Record a domain event and publish it as the relay would."""
    async with transaction(engine, tenant_id=tenant_id) as db:
        row = record_event(db, type, aggregate_type, aggregate_id, payload, tenant_id=tenant_id, version=version)
    async with transaction(engine, platform=True) as db:  # what the relay reads: every event, whoever it concerns
        saved = (await db.exec(select(DomainEvent).where(DomainEvent.event_id == row.event_id))).one()
    event = StreamEvent(seq=saved.id, **saved.model_dump(exclude={"id"}))
    await redis.xadd(ALL_EVENTS, event.to_fields())  # type: ignore[arg-type]
    return event


async def tenant_with_events(engine: AsyncEngine, redis: Redis, owner: uuid.UUID, name: str = "Acme") -> uuid.UUID:
    """A tenant in the write tables (owner a member) and the events that created it on the stream."""
    tid = await insert_tenant(engine, owner, name=name)
    await emit(engine, redis, "tenant.created", "tenant", tid, {"name": name, "slug": f"s-{tid.hex[:8]}",
               "created_by": str(owner)}, tenant_id=tid)  # fmt: skip
    await emit(engine, redis, "member.added", "membership", owner, {"role": "owner"}, tenant_id=tid)
    await emit(engine, redis, "tenant.provisioned", "tenant", tid, {}, tenant_id=tid)
    return tid


@contextlib.asynccontextmanager
async def running(*consumers: Consumer) -> AsyncIterator[list[asyncio.Task]]:
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        yield tasks
    finally:
        for c in consumers:
            c.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)  # a consumer that died raises here


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 5.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(interval)


def projector(redis: Redis, engine: AsyncEngine, **config: Any) -> Consumer:
    async def handler(event: StreamEvent) -> None:
        await project(engine, event)

    return Consumer(redis, ConsumerConfig(name=PROJECTOR, **{**FAST, **config}), handler)


async def overview_row(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict | None:
    async with transaction(engine, tenant_id=tenant_id) as db:
        conn = await db.connection()
        row = await conn.execute(text("SELECT * FROM rm_tenant_overview WHERE tenant_id = :t"), {"t": tenant_id})
        found = row.mappings().first()
    return dict(found) if found else None


async def active_overview(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict | None:
    row = await overview_row(engine, tenant_id)
    return row if row and row["status"] == "active" and row["member_count"] else None


async def test_projected_overview_is_served_cached_and_invalidated_within_a_second(client, engine, redis, user):
    tid = await tenant_with_events(engine, redis, user.id, name="Projected")
    headers = bearer((await login(client, user))["access_token"])
    invalidator = Consumer(redis, ConsumerConfig(name=CACHE_INVALIDATOR, **FAST), CacheInvalidator(redis))
    async with running(projector(redis, engine), invalidator):
        await eventually(lambda: active_overview(engine, tid))
        await eventually(lambda: asyncio.sleep(0, result=invalidator.handled == 3))  # done with those events
        first = await client.get(f"/v1/tenants/{tid}", headers=headers)
        assert first.status_code == 200 and first.headers["Read-Source"] == "read-model"
        body = first.json()
        assert (body["name"], body["status"], body["member_count"], body["role"]) == ("Projected", "active", 1, "owner")
        again = await client.get(f"/v1/tenants/{tid}", headers=headers)
        assert again.headers["Read-Source"] == "cache" and again.json()["member_count"] == 1
        listed = await client.get("/v1/tenants", headers=headers)
        assert listed.headers["Read-Source"] == "read-model"
        assert [(t["id"], t["name"], t["role"]) for t in listed.json()] == [(str(tid), "Projected", "owner")]

        other = await insert_user(engine)
        start = time.monotonic()
        await emit(engine, redis, "member.added", "membership", other.id, {"role": "member"}, tenant_id=tid)

        async def shows_two() -> bool:
            r = await client.get(f"/v1/tenants/{tid}", headers=headers)
            return r.json()["member_count"] == 2

        # Polled every 100 ms: each GET runs the whole API on this test's event loop, beside the consumers being
        # timed, and on a loaded machine a 20 ms poll took most of that loop (1.1 s once, 0.1 s when idle).
        await eventually(shows_two, timeout=1.0, interval=0.1)
        assert time.monotonic() - start < 1.0

        # the user profile, built from user events only
        await emit(engine, redis, "user.registered", "user", user.id,
                   {"status": "pending", "email": user.email, "display_name": "Projected User"})  # fmt: skip
        await emit(engine, redis, "user.verified", "user", user.id)
        login_event = await emit(engine, redis, "user.logged_in", "user", user.id, {"session_id": "s"})
        me = await client.get("/v1/me", headers={**headers, "Consistent-After": str(login_event.seq)})
        assert me.headers["Read-Source"] == "read-model", me.text
        profile = me.json()
        assert (profile["display_name"], profile["status"]) == ("Projected User", "active")
        assert profile["last_login_at"] and profile["memberships"] == [
            {"tenant_id": str(tid), "role": "owner", "joined_at": profile["memberships"][0]["joined_at"]}
        ]


async def test_a_row_read_before_a_lagging_projector_caught_up_is_not_cached(client, engine, redis, user):
    """The invalidator runs ahead of the projector: a read in between gets the older row once, and never puts it in
    the cache, however long the projector takes (the entry's floor is the event's position)."""
    tid = await tenant_with_events(engine, redis, user.id, name="Lagging")
    headers = bearer((await login(client, user))["access_token"])
    async with running(projector(redis, engine)):
        await eventually(lambda: active_overview(engine, tid))
    assert (await client.get(f"/v1/tenants/{tid}", headers=headers)).headers["Read-Source"] == "read-model"
    assert (await client.get(f"/v1/tenants/{tid}", headers=headers)).headers["Read-Source"] == "cache"

    other = await insert_user(engine)
    added = await emit(engine, redis, "member.added", "membership", other.id, {"role": "member"}, tenant_id=tid)
    invalidator = Consumer(redis, ConsumerConfig(name=CACHE_INVALIDATOR, **FAST), CacheInvalidator(redis))
    async with running(invalidator):  # the projector is not running: the read model still shows one member
        await eventually(lambda: asyncio.sleep(0, result=invalidator.handled >= 4))
    for _ in range(2):
        stale = await client.get(f"/v1/tenants/{tid}", headers=headers)
        assert stale.headers["Read-Source"] == "read-model" and stale.json()["member_count"] == 1
    assert int(await redis.get(cache_floor_key(cache_key("tenant_overview", tid)))) == added.seq

    async with running(projector(redis, engine)):
        await eventually(lambda: _member_count_is(engine, tid, 2))
    fresh = await client.get(f"/v1/tenants/{tid}", headers=headers)
    assert fresh.headers["Read-Source"] == "read-model" and fresh.json()["member_count"] == 2
    assert (await client.get(f"/v1/tenants/{tid}", headers=headers)).headers["Read-Source"] == "cache"


async def _member_count_is(engine: AsyncEngine, tenant_id: uuid.UUID, count: int) -> bool:
    row = await overview_row(engine, tenant_id)
    return bool(row and row["member_count"] == count)


async def test_read_after_write_without_a_projector(client, engine, redis, user):
    member = await insert_user(engine)
    tid = await insert_tenant(engine, user.id, name="No projector", members={member.id: "member"})
    headers = bearer((await login(client, user))["access_token"])
    changed = await client.patch(f"/v1/tenants/{tid}/members/{member.id}", json={"role": "admin"}, headers=headers)
    assert changed.status_code == 200, changed.text
    position = changed.headers["Event-Position"]
    start = time.monotonic()
    read = await client.get(f"/v1/tenants/{tid}", headers={**headers, "Consistent-After": position})
    waited = time.monotonic() - start
    assert read.status_code == 200 and read.headers["Read-Source"] == "primary"
    assert read.json()["member_count"] == 2
    start = time.monotonic()
    plain = await client.get(f"/v1/tenants/{tid}", headers=headers)  # no read model row at all: the primary
    answered = time.monotonic() - start
    assert plain.headers["Read-Source"] == "primary" and plain.json()["name"] == "No projector"
    # waited READ_CONSISTENCY_WAIT_SECONDS (1.0), then answered from the primary: give or take one slow request
    # under the suite's load (a plain read of the same tenant, timed just now), never the projector's lag
    assert waited < 1.0 + 1.0 + 2 * answered, (waited, answered)
    listed = await client.get("/v1/tenants", headers=headers)
    assert listed.headers["Read-Source"] == "primary" and [t["name"] for t in listed.json()] == ["No projector"]
    me = await client.get("/v1/me", headers=headers)
    assert me.status_code == 200 and me.headers["Read-Source"] == "primary"
    assert {m["tenant_id"]: m["role"] for m in me.json()["memberships"]}[str(tid)] == "owner"


async def test_a_crash_mid_handler_is_redelivered_to_another_copy_and_applied_once(engine, redis, user):
    tid = await tenant_with_events(engine, redis, user.id)
    deliveries: list[uuid.UUID] = []
    hang = asyncio.Event()

    async def commits_then_dies(event: StreamEvent) -> None:
        deliveries.append(event.event_id)
        await project(engine, event)  # committed ...
        if event.type == "tenant.provisioned" and deliveries.count(event.event_id) == 1:
            await hang.wait()  # ... but never acked: the copy dies here

    crashing = Consumer(redis, ConsumerConfig(name=PROJECTOR, **FAST), commits_then_dies, copy_id="crashing")
    task = asyncio.create_task(crashing.run())
    await eventually(lambda: asyncio.sleep(0, result=len(deliveries) == 3))
    task.cancel()  # no graceful stop: its leases stay until they expire
    with contextlib.suppress(asyncio.CancelledError):
        await task
    survivor = Consumer(redis, ConsumerConfig(name=PROJECTOR, **FAST), commits_then_dies, copy_id="survivor")

    async def caught_up() -> bool:
        groups = [survivor.group(k) for k in range(survivor.config.partitions)]
        pending = [(await redis.xpending(ALL_EVENTS, g))["pending"] for g in groups]
        return survivor.handled >= 1 and sum(pending) == 0

    async with running(survivor):
        await eventually(caught_up, timeout=5)  # every entry acked, none left to the dead copy
    provisioned = deliveries[2]
    assert deliveries.count(provisioned) == 2  # redelivered after the lease lapsed (XAUTOCLAIM)
    async with engine.connect() as conn:
        applied = await conn.execute(
            text("SELECT count(*) FROM rm_applied WHERE event_id = :e AND projection = 'tenant_overview'"),
            {"e": provisioned},
        )
        assert applied.scalar_one() == 1
    assert (await overview_row(engine, tid))["status"] == "active"


async def test_a_tenant_s_events_applied_before_its_creation_end_in_one_complete_row(engine, redis, user, caplog):
    """Whatever order the projector meets a tenant's events in, the overview ends as the log says."""
    tid = await insert_tenant(engine, user.id, name="Late")
    created = await emit(engine, redis, "tenant.created", "tenant", tid, {"name": "Late", "slug": f"l-{tid.hex[:8]}",
                         "created_by": str(user.id)}, tenant_id=tid)  # fmt: skip
    member = await emit(engine, redis, "member.added", "membership", user.id, {"role": "owner"}, tenant_id=tid)
    billing = await emit(engine, redis, "tenant.billing_configured", "tenant", tid,
                         {"currency": "eur", "stripe_customer_id": "cus_late"}, tenant_id=tid)  # fmt: skip
    provisioned = await emit(engine, redis, "tenant.provisioned", "tenant", tid, {}, tenant_id=tid)

    for event in (provisioned, billing, member):
        await project(engine, event)
    partial = await overview_row(engine, tid)
    assert partial is not None and partial["name"] is None  # not a row a reader serves (api/read_models.py)
    assert "tenant.provisioned" in caplog.text and "came before its tenant's row" in caplog.text
    for event in (created, provisioned):  # the late creation, then a redelivery (skipped: already applied)
        await project(engine, event)

    row = await overview_row(engine, tid)
    assert row is not None
    assert (row["name"], row["status"], row["currency"], row["member_count"]) == ("Late", "active", "eur", 1)
    assert row["activated_at"] is not None and row["created_by"] == user.id


async def test_retry_limit_and_unknown_versions_park_the_entry(engine, redis, user):
    async def always_fails(event: StreamEvent) -> None:
        raise ValueError(f"cannot handle {event.type}")

    tid = uuid.uuid4()
    failing = await emit(engine, redis, "user.logged_in", "user", user.id, {"session_id": "x"})
    async with running(Consumer(redis, ConsumerConfig(name="flaky", max_attempts=3, **FAST), always_fails)):
        rows = await eventually(lambda: parked(redis))
    entry = rows[0]
    assert (entry["consumer"], entry["event_id"], entry["attempts"]) == ("flaky", str(failing.event_id), "3")
    assert "ValueError: cannot handle user.logged_in" in entry["reason"]
    assert await redis.hlen("consumer:flaky:attempts") == 0

    future = await emit(engine, redis, "tenant.created", "tenant", tid, {"name": "v2"}, tenant_id=tid, version=2)
    async with running(projector(redis, engine)):
        rows = await eventually(lambda: _parked_for(redis, PROJECTOR))
    assert rows[0]["event_id"] == str(future.event_id)
    assert "unsupported event version" in rows[0]["reason"] and rows[0]["attempts"] == "1"
    assert await overview_row(engine, tid) is None
    assert await redis.xlen(PARKED) >= 2


async def _parked_for(redis: Redis, consumer: str) -> list[dict[str, str]]:
    return [row for row in await parked(redis) if row["consumer"] == consumer]


def _tenants_in_every_partition(partitions: int, count: int) -> list[uuid.UUID]:
    """`count` tenant ids, at least one in each partition: random ones all fell into the two partitions one copy
    held now and then (1 run in 32), and the other copy had nothing to do."""
    first: dict[int, uuid.UUID] = {}
    while len(first) < partitions:
        tenant = uuid.uuid4()
        first.setdefault(partition_of({"tenant_id": str(tenant)}, partitions), tenant)
    return list(first.values()) + [uuid.uuid4() for _ in range(count - partitions)]


async def test_two_projector_copies_split_the_work_and_keep_each_aggregates_order(engine, redis, user):
    seen: dict[str, list[tuple[str, int]]] = {}

    def recording(copy: str) -> Consumer:
        async def handler(event: StreamEvent) -> None:
            seen.setdefault(str(event.tenant_id), []).append((copy, event.seq))
            await project(engine, event)

        return Consumer(redis, ConsumerConfig(name=PROJECTOR, partitions=4, **FAST), handler, copy_id=copy)

    a, b = recording("a"), recording("b")
    async with running(a, b):
        await eventually(lambda: asyncio.sleep(0, result=len(a.held) == len(b.held) == 2))
        users = [await insert_user(engine) for _ in range(3)]
        tenants = _tenants_in_every_partition(partitions=4, count=6)
        published: dict[str, list[int]] = {str(t): [] for t in tenants}
        for t in tenants:
            e = await emit(engine, redis, "tenant.created", "tenant", t, {"name": f"T{t.hex[:4]}"}, tenant_id=t)
            published[str(t)].append(e.seq)
        for round_ in range(3):  # interleaved: every tenant's events alternate with the others'
            for t in tenants:
                u = users[round_]
                e = await emit(engine, redis, "member.added", "membership", u.id, {"role": "member"}, tenant_id=t)
                published[str(t)].append(e.seq)
        for t in tenants[:3]:
            e = await emit(engine, redis, "member.removed", "tenant", t, {"user_id": str(users[0].id)}, tenant_id=t)
            published[str(t)].append(e.seq)
        total = sum(len(v) for v in published.values())
        await eventually(lambda: asyncio.sleep(0, result=sum(len(v) for v in seen.values()) >= total))
    assert {copy for events in seen.values() for copy, _ in events} == {"a", "b"}  # both copies worked
    for t, seqs in published.items():
        assert [seq for _, seq in seen[t]] == seqs  # each tenant's events once, in stream order
        assert len({copy for copy, _ in seen[t]}) == 1  # by one copy
    for i, t in enumerate(tenants):
        assert (await overview_row(engine, t))["member_count"] == (2 if i < 3 else 3)

    # replay equals live, while the projector could keep running: a tenant, then the user profile since a time
    before = {t: _comparable(await overview_row(engine, t)) for t in tenants[:2]}
    lines: list[tuple[int, int]] = []
    for t in tenants[:2]:
        settings_url = engine.url.render_as_string(hide_password=False)
        n = await replay(settings_url, "tenant_overview", tenant_id=t, progress=lambda d, n: lines.append((d, n)))
        assert n == len(published[str(t)])
    assert lines[-1][0] == lines[-1][1] and lines[0][0] == 0  # progress from 0 to all
    assert {t: _comparable(await overview_row(engine, t)) for t in tenants[:2]} == before


def _comparable(row: dict | None) -> dict:
    assert row is not None
    return {k: v for k, v in row.items() if k != "updated_at"}


async def test_user_profile_replay_equals_live_with_the_projector_running(engine, redis, user):
    tid = await tenant_with_events(engine, redis, user.id)
    await emit(engine, redis, "user.registered", "user", user.id, {"status": "pending", "email": user.email})
    await emit(engine, redis, "user.verified", "user", user.id)
    url = engine.url.render_as_string(hide_password=False)
    async with running(projector(redis, engine)):
        last = await emit(engine, redis, "user.logged_in", "user", user.id, {"session_id": "s"})

        async def profile() -> dict | None:
            async with transaction(engine, user_id=user.id) as db:
                conn = await db.connection()
                row = await conn.execute(text("SELECT * FROM rm_user_profile WHERE user_id = :u"), {"u": user.id})
                found = row.mappings().first()
                seen = found is not None and found["last_seq"] == last.seq
                return _comparable(dict(found)) if seen else None

        live = await eventually(profile)
        replaying = asyncio.create_task(replay(url, "user_profile", since=last.occurred_at))
        await emit(
            engine, redis, "member.role_changed", "tenant", tid, {"user_id": str(user.id), "to": "admin"}, tenant_id=tid
        )  # fmt: skip — applied live while the rebuild runs
        assert await replaying >= 3
        assert await profile() == live

        async def role() -> str | None:
            async with transaction(engine, user_id=user.id) as db:
                conn = await db.connection()
                row = await conn.execute(
                    text("SELECT role FROM rm_user_membership WHERE user_id = :u AND tenant_id = :t"),
                    {"u": user.id, "t": tid},
                )
                value = row.scalar_one_or_none()
                return value if value == "admin" else None

        assert await eventually(role) == "admin"


@pytest.fixture
async def cacheless_client(settings: Settings, schema: None) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The API with its read-model cache on a Redis that is not there (sessions still work)."""
    app = create_app(settings.model_copy(update={"cache_redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
            yield c, app


async def test_reads_answer_from_the_database_when_the_cache_is_down(cacheless_client, engine, redis, user):
    client, _ = cacheless_client
    tid = await tenant_with_events(engine, redis, user.id, name="No cache")
    async with running(projector(redis, engine)):
        await eventually(lambda: active_overview(engine, tid))
    headers = bearer((await login(client, user))["access_token"])
    for _ in range(2):
        read = await client.get(f"/v1/tenants/{tid}", headers=headers)
        assert read.status_code == 200 and read.headers["Read-Source"] == "read-model"
        assert read.json()["name"] == "No cache"
    me = await client.get("/v1/me", headers=headers)
    assert me.status_code == 200 and me.json()["email"] == user.email


async def test_the_cache_never_answers_for_another_tenant(client, engine, redis, user):
    stranger = await insert_user(engine)
    mine = await tenant_with_events(engine, redis, user.id, name="Secret Inc")
    theirs = await tenant_with_events(engine, redis, stranger.id, name="Other Org")
    async with running(projector(redis, engine)):
        await eventually(lambda: active_overview(engine, theirs))
        await eventually(lambda: active_overview(engine, mine))
    owner_headers = bearer((await login(client, user))["access_token"])
    stranger_headers = bearer((await login(client, stranger))["access_token"])
    assert (await client.get(f"/v1/tenants/{mine}", headers=owner_headers)).status_code == 200
    assert await redis.exists(cache_key("tenant_overview", mine))  # cached now
    probe = await client.get(f"/v1/tenants/{mine}", headers=stranger_headers)
    assert probe.status_code == 404 and "Secret" not in probe.text
    # even an entry under the wrong key (a bug, a poisoned cache) is not served for another tenant
    await redis.copy(cache_key("tenant_overview", mine), cache_key("tenant_overview", theirs), replace=True)
    read = await client.get(f"/v1/tenants/{theirs}", headers=stranger_headers)
    assert read.status_code == 200 and read.json()["name"] == "Other Org" and "Secret" not in read.text


async def test_prognet_consume_projects_and_stops_cleanly_on_sigterm(services, engine, redis, user):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prognet.cli", "consume", env={**services.env(), "LOG_LEVEL": "WARNING"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        tid = await tenant_with_events(engine, redis, user.id, name="Via process")
        row = await eventually(lambda: active_overview(engine, tid), timeout=15)
        assert row["name"] == "Via process"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, output.decode()
    assert not await redis.zcard("consumer:projector:copies")  # its leases and heartbeat were given back


async def test_an_outage_is_not_an_attempt_the_consumer_backs_off_and_carries_on(engine, redis, user):
    calls: list[str] = []

    async def database_down_for_a_while(event: StreamEvent) -> None:
        calls.append(event.type)
        if len(calls) <= 2:
            raise ConnectionRefusedError("PostgreSQL is down")

    await emit(engine, redis, "user.logged_in", "user", user.id, {"session_id": "x"})
    consumer = Consumer(redis, ConsumerConfig(name="patient", max_attempts=1, **FAST), database_down_for_a_while)
    async with running(consumer):
        await eventually(lambda: asyncio.sleep(0, result=consumer.handled == 1))
    assert calls == ["user.logged_in"] * 3 and await _parked_for(redis, "patient") == []


async def test_events_without_columns_of_their_own_still_move_last_seq(engine, user):
    """Events the read models show nothing of (a payment failure, a role change, a logout) are applied, not
    parked: the row's `last_seq` moves on. Applied directly (no stream): only the projection is under test."""
    tid = uuid.uuid4()
    base = int(time.time() * 1000)  # seqs above anything this session's tables hold

    def event(seq: int, type: str, aggregate_type: str, payload: dict, **ids: Any) -> StreamEvent:
        return StreamEvent(seq=base + seq, event_id=uuid.uuid4(), type=type, version=1, aggregate_type=aggregate_type,
                           aggregate_id=str(ids.pop("aggregate_id", tid)), tenant_id=ids.get("tenant_id"),
                           user_id=ids.get("user_id"), actor_id=None, workflow_id=None,
                           occurred_at=datetime.now(UTC), payload=payload)  # fmt: skip

    failed = {"number": 1, "attempt": 1, "decline_code": None, "payment_intent_id": None, "next_retry_at": None}
    events = [
        event(1, "tenant.created", "tenant", {"name": "Generic", "slug": f"g-{tid.hex[:8]}"}, tenant_id=tid),
        event(
            2,
            "user.registered",
            "user",
            {"status": "active", "email": "g@example.com"},
            user_id=user.id,
            aggregate_id=user.id,
        ),
        event(3, "invoice.payment_failed", "invoice", failed, tenant_id=tid, aggregate_id=uuid.uuid4()),
        event(
            4, "member.role_changed", "tenant", {"user_id": str(user.id), "from": "owner", "to": "admin"}, tenant_id=tid
        ),
        event(5, "user.logged_out", "user", {"session_id": "s"}, user_id=user.id, aggregate_id=user.id),
    ]
    for e in events:
        await project(engine, e)
    async with transaction(engine, platform=True) as db:
        conn = await db.connection()
        overview = await conn.execute(text("SELECT last_seq FROM rm_tenant_overview WHERE tenant_id = :t"), {"t": tid})
        profile = await conn.execute(text("SELECT last_seq FROM rm_user_profile WHERE user_id = :u"), {"u": user.id})
        assert (overview.scalar_one(), profile.scalar_one()) == (base + 4, base + 5)


class ReplyDropper:
    """A TCP proxy in front of Redis that, once, cuts the connection instead of passing on the reply to an
    `XREADGROUP … >` (Redis has delivered the entries; the consumer never sees them)."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.dropped = False

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        upstream, to_redis = await asyncio.open_connection("127.0.0.1", self.redis_port)
        armed = False

        async def requests() -> None:
            nonlocal armed
            while data := await client.read(65536):
                armed = armed or (not self.dropped and b"XREADGROUP" in data.upper() and b"\r\n>\r\n" in data)
                to_redis.write(data)
                await to_redis.drain()

        async def replies() -> None:
            while data := await upstream.read(65536):
                if armed and not self.dropped:
                    self.dropped = True
                    return
                to_client.write(data)
                await to_client.drain()

        try:
            await asyncio.wait(
                [asyncio.create_task(requests()), asyncio.create_task(replies())], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            to_client.transport.abort()
            to_redis.transport.abort()


async def test_a_lost_read_reply_hides_no_entry(engine, redis, user):
    """The entries of an XREADGROUP whose reply was lost are pending for the copy: it reads them again rather
    than retrying the read and moving past them (what redis-py's own retry would do)."""
    last = await emit(engine, redis, "user.logged_in", "user", user.id, {"session_id": "lost-reply"})
    seen: set[uuid.UUID] = set()

    async def handler(event: StreamEvent) -> None:
        seen.add(event.event_id)

    dropper = ReplyDropper(redis.connection_pool.connection_kwargs["port"])  # the session's Redis, behind the proxy
    async with dropper as proxy_port:
        client = backbone_client(f"redis://127.0.0.1:{proxy_port}/0", socket_timeout=5, socket_connect_timeout=2)
        assert client.connection_pool.connection_kwargs["retry"].get_retries() == 0  # what the production copies use
        consumer = Consumer(client, ConsumerConfig(name=f"lossy-{uuid.uuid4().hex[:6]}", partitions=1, **FAST), handler)
        async with running(consumer):
            await eventually(lambda: asyncio.sleep(0, result=last.event_id in seen), timeout=10)
        await client.aclose()
    assert dropper.dropped
    # every event up to the last one was handled, the dropped reply's among them
    assert set(await _events_up_to(redis, last)) <= seen


async def _events_up_to(redis: Redis, last: StreamEvent) -> list[uuid.UUID]:
    events = []
    for _, fields in await redis.xrange(ALL_EVENTS):
        with contextlib.suppress(Exception):  # other tests' unreadable entries are parked, not handled
            events.append(StreamEvent.from_fields(fields).event_id)
    return events[: events.index(last.event_id) + 1]
