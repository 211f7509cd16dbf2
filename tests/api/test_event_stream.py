"""Server-sent event streams over real HTTP (uvicorn on a free port, in the test's loop) on the session's Redis and
PostgreSQL: order and ids, resume, reset, heartbeats, logout, tenant isolation, limits, replicas, saga progress.

Events are put on the streams as the relay would (`StreamEvent` XADDs); the tenant isolation test runs the real
relay on domain_events rows instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from models.db import transaction
from models.event_stream import user_stream
from models.events import record_event
from models.tables import Membership
from prognet.settings import Settings
from prognet_dev import EmbeddedStack, free_port
from relay.relay import Relay
from tests.api.conftest import (
    assert_problem,
    bearer,
    create_tenant,
    insert_tenant,
    insert_user,
    login,
    person,
    wait_for_tenant,
)
from tests.support import sse
from tests.support.sse import SSE, Stream, event, logged_in, publish, serve, sse_settings, stream
from tests.support.tcp_relay import TcpRelay


@pytest.fixture
async def base_url(settings: Settings, schema: None) -> AsyncIterator[str]:
    async with serve(sse_settings(settings)) as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client


# the shared engine and Redis client (decoded replies) of the event-stream tests
db = sse.db
redis = sse.redis


# --- the caller's own stream -----------------------------------------------------------------------------------


async def test_events_arrive_in_order_with_ids_and_a_reconnect_gets_exactly_the_missed_ones(http, db, redis):
    account, tokens = await logged_in(http, db)
    headers = bearer(tokens["access_token"])
    sent = [event("test.one", user=account.id, n=i) for i in range(3)]
    async with stream(http, headers) as s:
        ids = await publish(redis, *sent)
        got = await s.take(3)
    assert [m.id for m in got] == ids
    assert [m.event for m in got] == ["test.one"] * 3
    assert [m.data["payload"] for m in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
    first = got[0].data
    assert first["event_id"] == str(sent[0].event_id) and first["version"] == 1 and first["tenant_id"] is None
    assert first["aggregate"] == {"type": "test", "id": "a"} and first["occurred_at"]

    missed = await publish(redis, *(event("test.one", user=account.id, n=i) for i in (3, 4)))
    async with stream(http, {**headers, "Last-Event-ID": ids[-1]}) as s:
        again = await s.take(2)
    assert [m.id for m in again] == missed
    assert [m.data["payload"]["n"] for m in again] == [3, 4]

    # the query parameter, for clients that cannot set the header; and a type filter with a prefix
    await publish(redis, event("other.thing", user=account.id), event("test.two", user=account.id))
    async with stream(http, headers, last_event_id=ids[-1], types="test.*") as s:
        filtered = await s.take(3)
    assert [m.data["payload"].get("n") for m in filtered] == [3, 4, None]
    assert filtered[-1].event == "test.two"


async def test_heartbeats_come_on_an_idle_stream(http, db):
    _, tokens = await logged_in(http, db)
    async with stream(http, bearer(tokens["access_token"])) as s:
        beat = await s.next(timeout=3.0, comments=True)
    assert beat is not None and beat.comment == "heartbeat" and beat.data is None


async def test_a_last_event_id_beyond_retention_gets_a_reset_then_live_events(http, db, redis):
    account, tokens = await logged_in(http, db)
    headers = bearer(tokens["access_token"])
    ids = await publish(redis, *(event("test.one", user=account.id, n=i) for i in range(5)))
    await redis.xtrim(user_stream(account.id), maxlen=2, approximate=False)
    async with stream(http, {**headers, "Last-Event-ID": ids[0]}) as s:
        reset = await s.next()
        assert reset is not None and reset.event == "reset" and reset.id == ids[-1]
        assert "re-read state" in reset.data["reason"]
        live = await publish(redis, event("test.one", user=account.id, n=5))
        after = await s.next()
    assert after is not None and after.id == live[0] and after.data["payload"] == {"n": 5}

    # within retention: no reset, just the rest
    async with stream(http, {**headers, "Last-Event-ID": ids[3]}) as s:
        rest = await s.take(2)
    assert [m.id for m in rest] == [ids[4], live[0]]

    assert_problem(
        await http.get("/v1/events/stream", headers={**headers, "Last-Event-ID": "yesterday"}),
        400,
        "invalid-last-event-id",
    )


async def test_logout_ends_the_stream_with_a_reason(http, db):
    _, tokens = await logged_in(http, db)
    headers = bearer(tokens["access_token"])
    async with stream(http, headers) as s:
        assert (await http.post("/v1/auth/logout", headers=headers)).status_code == 204
        final = await s.next(timeout=3.0)
        assert final is not None and final.event == "error" and final.data["reason"] == "session-ended"
        assert await s.next(timeout=3.0) is None  # and the stream is over
    assert_problem(await http.get("/v1/events/stream", headers=headers), 401, "invalid-access-token")


async def test_a_user_may_hold_only_so_many_streams(http, db):
    _, tokens = await logged_in(http, db)
    headers = bearer(tokens["access_token"])
    async with contextlib.AsyncExitStack() as open_streams:
        for _ in range(3):  # the limit these settings set
            await open_streams.enter_async_context(stream(http, headers))
        refused = await http.get("/v1/events/stream", headers=headers)
        assert_problem(refused, 429, "too-many-streams")
        assert int(refused.headers["Retry-After"]) >= 1
    # closed streams give their slots back, as soon as the server has seen the disconnects: a client that
    # follows Retry-After gets its stream on the first retry
    for attempt in range(2):
        async with http.stream("GET", "/v1/events/stream", headers=headers) as response:
            if response.status_code == 429 and attempt == 0:
                await asyncio.sleep(int(response.headers["Retry-After"]))
                continue
            assert response.status_code == 200, (await response.aread()).decode()
            assert (await Stream(response).next(timeout=3.0, comments=True)) is not None
            break


async def test_two_replicas_serve_the_same_users_stream(settings, schema, db, redis):
    async with (
        serve(sse_settings(settings)) as one,
        serve(sse_settings(settings)) as two,
        httpx.AsyncClient(base_url=one, timeout=10) as a,
        httpx.AsyncClient(base_url=two, timeout=10) as b,
    ):
        account, tokens = await logged_in(a, db)  # logged in on one replica, streaming from both
        headers = bearer(tokens["access_token"])
        async with stream(a, headers) as on_one, stream(b, headers) as on_two:
            ids = await publish(redis, *(event("test.one", user=account.id, n=i) for i in range(3)))
            assert [m.id for m in await on_one.take(3)] == ids
            got = await on_two.take(2)  # the second replica's client goes away early ...
        assert [m.id for m in got] == ids[:2]
        async with stream(b, {**headers, "Last-Event-ID": got[-1].id}) as resumed:  # ... and resumes
            assert [m.id for m in await resumed.take(1)] == ids[2:]
        async with stream(a, {**headers, "Last-Event-ID": got[0].id}) as elsewhere:  # on either replica
            assert [m.id for m in await elsewhere.take(2)] == ids[1:]


async def test_redis_going_away_ends_the_stream_and_new_streams_answer_503(settings, schema, db, redis_url):
    real = make_url(redis_url)
    listen = ("127.0.0.1", free_port())
    cache = TcpRelay((real.host or "127.0.0.1", real.port or 6379), listen)
    await cache.up()
    relayed = sse_settings(settings, redis_url=real.set(host=listen[0], port=listen[1]).render_as_string())
    async with serve(relayed) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        _, tokens = await logged_in(http, db)
        headers = bearer(tokens["access_token"])
        async with stream(http, headers) as s:
            await cache.down()
            final = await s.next(timeout=5.0)
            assert final is not None and final.event == "error" and final.data["reason"] == "cache-unavailable"
            assert await s.next(timeout=3.0) is None
        refused = await http.get("/v1/events/stream", headers=headers)
        assert_problem(refused, 503, "cache-unavailable")
        assert refused.headers["Retry-After"]


# --- a tenant's stream -----------------------------------------------------------------------------------------


@asynccontextmanager
async def running_relay(services: EmbeddedStack, redis_url: str) -> AsyncIterator[None]:
    assert services.database_url
    client = Redis.from_url(redis_url)
    stop = asyncio.Event()
    task = asyncio.create_task(Relay(services.database_url, client, poll_seconds=0.2).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await client.aclose()


async def record(engine: AsyncEngine, tenant_id: uuid.UUID, type: str, **payload: Any) -> uuid.UUID:
    async with transaction(engine, tenant_id=tenant_id) as session:
        return record_event(session, type, "tenant", tenant_id, payload, tenant_id=tenant_id).event_id


async def test_a_tenant_stream_shows_only_that_tenants_events_to_its_members(http, db, services, redis_url):
    owner, tokens = await logged_in(http, db)
    member = await insert_user(db)
    other_owner = await insert_user(db)
    ours = await insert_tenant(db, owner.id, members={member.id: "member"})
    theirs = await insert_tenant(db, other_owner.id)
    owner_headers = bearer(tokens["access_token"])
    member_headers = bearer((await login(http, member))["access_token"])
    other_headers = bearer((await login(http, other_owner))["access_token"])

    # not a member (or no such tenant): 404 before any stream starts, as every tenant route answers
    for tenant in (theirs, uuid.uuid4()):
        refused = await http.get("/v1/events/stream", headers=owner_headers, params={"tenant_id": str(tenant)})
        assert_problem(refused, 404, "not-found")

    async with (
        running_relay(services, redis_url),
        stream(http, owner_headers, tenant_id=str(ours)) as as_owner,
        stream(http, member_headers, tenant_id=str(ours)) as as_member,
        stream(http, other_headers, tenant_id=str(theirs)) as as_other,
    ):
        await record(db, theirs, "tenant.suspended", probe="theirs")
        first = await record(db, ours, "tenant.provisioned", probe="ours")
        await record(db, ours, "invitation.created", probe="managers only")
        last = await record(db, ours, "tenant.reactivated", probe="ours again")
        seen = await as_owner.take(3)
        assert [m.data["event_id"] for m in (seen[0], seen[2])] == [str(first), str(last)]
        assert [m.event for m in seen] == ["tenant.provisioned", "invitation.created", "tenant.reactivated"]
        assert {m.data["tenant_id"] for m in seen} == {str(ours)}
        member_saw = await as_member.take(2)
        assert [m.event for m in member_saw] == ["tenant.provisioned", "tenant.reactivated"]
        other_saw = await as_other.next()
        assert other_saw is not None and other_saw.data["payload"] == {"probe": "theirs"}

        # the member is removed: their stream ends with a reason (checked at the next heartbeat at the latest)
        async with transaction(db, tenant_id=ours) as session:
            await session.delete(await session.get(Membership, (ours, member.id)))
        final = await as_member.next(timeout=3.0)
        assert final is not None and final.event == "error" and final.data["reason"] == "access-revoked"
        assert await as_member.next(timeout=3.0) is None
        assert await as_other.next(timeout=1.0, comments=True) is not None  # a heartbeat, not another event


# --- a slow consumer -------------------------------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_disconnected_as_a_slow_consumer(settings, schema, db, redis):
    async with serve(sse_settings(settings), send_buffer=16384) as url, httpx.AsyncClient(base_url=url) as http:
        account, tokens = await logged_in(http, db)
        text = await stalled_client(url, tokens["access_token"], redis, account.id)
    assert text.startswith("HTTP/1.1 200")
    assert 0 < text.count("event: test.big") < 200  # cut off, not everything delivered
    assert "event: error" in text and '"reason":"slow-consumer"' in text
    assert text.endswith("0\r\n\r\n")  # the chunked body was ended properly


async def stalled_client(base_url: str, token: str, redis: Redis, user_id: uuid.UUID) -> str:
    """Opens the stream, stops reading while 200 large events are published, then reads everything there is."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes back up soon
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    request = (
        f"GET /v1/events/stream HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    await asyncio.sleep(0.3)  # the stream has started; now this client reads nothing for a while
    big = "x" * 4000
    # The server's writes back up with the first few events, so the send timeout runs from about when publishing
    # starts, however long publishing all 200 takes on a loaded machine: read again 1.5 timeouts after that start,
    # inside the window in which the server delivers its farewell.
    publishing = asyncio.create_task(
        publish(redis, *(event("test.big", user=user_id, n=i, pad=big) for i in range(200)))
    )
    await asyncio.sleep(SSE["send_timeout"] * 1.5)  # a write has waited longer than the send timeout
    received = bytearray()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
    sock.close()
    await publishing
    return received.decode(errors="replace")


# --- saga progress ---------------------------------------------------------------------------------------------


async def test_a_saga_progress_stream_shows_the_steps_then_the_end(
    temporal_settings, temporal_app, api, app_engine, stripe_faults
):
    async with serve(sse_settings(temporal_settings)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        owner = await person(client, app_engine)
        stranger = await person(client, app_engine)
        # Stripe fails the customer's creation a few times: the saga is still running, retrying, when the stream
        # opens (unhindered, it can finish first on a fast machine and the stream has only its end to show).
        await stripe_faults({"status": 500, "count": 3, "path_prefix": "/v1/customers", "method": "POST"})
        accepted = await create_tenant(client, owner)
        path = f"/v1/workflows/{accepted['workflow_id']}/stream"
        assert_problem(await client.get(path, headers=stranger.headers), 404, "not-found")
        messages = []
        async with stream(client, owner.headers, path) as s:
            while (m := await s.next(timeout=30)) is not None:
                messages.append(m)
        await wait_for_tenant(client, owner, accepted["tenant_id"])
    *progress, end = messages
    assert progress and [m.event for m in progress] == ["progress"] * len(progress)
    assert progress[0].data["status"] == "running" and progress[0].data["workflow_id"] == accepted["workflow_id"]
    assert all(a.data != b.data for a, b in itertools.pairwise(progress))  # sent on change only
    assert end.event == "end" and end.data["status"] == "completed"
    assert end.data["saga"]["status"] == "completed" and end.data["saga"]["completed_steps"]
