"""The per-process shared reader of event streams (`api.fanout`) over real HTTP, Redis and PostgreSQL: clients of one
stream key share one XREAD loop, which stops when the last leaves; a slow client never delays a fast one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator

import httpx
from sqlalchemy.engine import make_url

from api.app import create_app
from api.fanout import Fanout
from models.event_stream import user_stream
from prognet_dev import free_port
from tests.api.conftest import bearer
from tests.support import sse
from tests.support.sse import event, logged_in, publish, serve, sse_settings, stream
from tests.support.tcp_relay import TcpRelay

# the event-stream tests' own engine and Redis client (decoded replies), shared as fixtures
db = sse.db
redis = sse.redis


async def listeners_of(fanout: Fanout, key: str, n: int, seconds: float = 5.0) -> None:
    """Waits until `key`'s shared reader has `n` listeners (n=0: until it has stopped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reader = fanout.readers.get(key)
        if (len(reader.listeners) if reader else 0) == n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} did not get to {n} listeners")


async def test_two_clients_of_one_stream_share_one_reader_which_stops_when_they_leave(settings, schema, db, redis):
    app = create_app(sse_settings(settings, sse_heartbeat_seconds=5.0))
    async with serve(app.state.settings, app=app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        account, tokens = await logged_in(http, db)
        headers = bearer(tokens["access_token"])
        key = user_stream(account.id)
        fanout: Fanout = app.state.sse_fanout
        async with stream(http, headers) as one, stream(http, headers, types="test.two") as two:
            await listeners_of(fanout, key, 2)
            assert list(fanout.readers) == [key]
            reader = fanout.readers[key]
            xreads_before = reader.xreads
            ids = await publish(redis, *(event(t, user=account.id) for t in ("test.one", "test.two", "test.one")))
            assert [m.id for m in await one.take(3)] == ids
            assert [(m.id, m.event) for m in await two.take(1)] == [(ids[1], "test.two")]  # its own filter
            # one loop read them for both: a read per wake-up at most, not one per client and event
            assert reader.xreads - xreads_before <= len(ids) + 1
            assert fanout.readers[key] is reader

            # a third client resuming from the first event catches up on its own, then joins the same reader
            async with stream(http, {**headers, "Last-Event-ID": ids[0]}) as three:
                assert [m.id for m in await three.take(2)] == ids[1:]
                await listeners_of(fanout, key, 3)
                live = await publish(redis, event("test.one", user=account.id))
                got = await three.take(1)
                assert [m.id for m in got] == live  # no gap, no duplicate across the join
                assert [m.id for m in await one.take(1)] == live
            assert fanout.readers[key] is reader
        await listeners_of(fanout, key, 0)
        assert fanout.readers == {}
        await asyncio.sleep(0)
        assert reader.task.done()  # the loop stopped with its last listener


async def test_a_slow_client_does_not_delay_a_fast_one_on_the_same_stream(settings, schema, db, redis):
    send_timeout = 3.0
    app = create_app(sse_settings(settings, sse_heartbeat_seconds=5.0, sse_send_timeout_seconds=send_timeout))
    async with (
        serve(app.state.settings, send_buffer=16384, app=app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        account, tokens = await logged_in(http, db)
        headers = bearer(tokens["access_token"])
        key = user_stream(account.id)
        async with stream(http, headers) as fast, stalled(url, tokens["access_token"]) as slow:
            await listeners_of(app.state.sse_fanout, key, 2)
            big = "x" * 4000
            published = time.monotonic()
            ids = await publish(redis, *(event("test.big", user=account.id, n=i, pad=big) for i in range(200)))
            got = await fast.take(200, timeout=send_timeout)
            fast_done = time.monotonic() - published
            assert [m.id for m in got] == ids  # all of them, in order
            # before the stalled client's write has even timed out: the fast one did not wait for it
            assert fast_done < send_timeout, fast_done
            await asyncio.sleep(max(0.0, published + send_timeout * 1.3 - time.monotonic()))
            text = await slow.read_all()
        assert 0 < text.count("event: test.big") < 200  # cut off, not everything delivered
        assert "event: error" in text and '"reason":"slow-consumer"' in text
        await listeners_of(app.state.sse_fanout, key, 0)


async def test_the_shared_reader_outlives_a_redis_blip_and_its_clients_miss_nothing(
    settings, schema, db, redis, redis_url
):
    real = make_url(redis_url)
    listen = ("127.0.0.1", free_port())
    cache = TcpRelay((real.host or "127.0.0.1", real.port or 6379), listen)
    await cache.up()
    # a slow heartbeat: no guard check (which would end the stream while Redis is away) falls in the blip
    relayed = sse_settings(
        settings, sse_heartbeat_seconds=10.0, redis_url=real.set(host=listen[0], port=listen[1]).render_as_string()
    )
    app = create_app(relayed)
    async with serve(relayed, app=app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        account, tokens = await logged_in(http, db)
        key = user_stream(account.id)
        async with stream(http, bearer(tokens["access_token"])) as s:
            await listeners_of(app.state.sse_fanout, key, 1)
            reader = app.state.sse_fanout.readers[key]
            first = await publish(redis, event("test.one", user=account.id, n=0))
            assert [m.id for m in await s.take(1)] == first
            await cache.down()  # the reader's XREAD connection is cut
            during = await publish(redis, *(event("test.one", user=account.id, n=i) for i in (1, 2)))
            await asyncio.sleep(0.3)
            await cache.up()
            got = await s.take(2, timeout=8.0)  # the reader reconnects with backoff, from where it was
            assert [m.id for m in got] == during
            assert app.state.sse_fanout.readers[key] is reader and not reader.task.done()


class StalledClient:
    """A stream client on a raw socket with a tiny receive window that reads nothing until `read_all`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def read_all(self) -> str:
        loop = asyncio.get_running_loop()
        received = bytearray()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while chunk := await loop.sock_recv(self.sock, 65536):
                    received += chunk
        return received.decode(errors="replace")


@contextlib.asynccontextmanager
async def stalled(base_url: str, token: str) -> AsyncIterator[StalledClient]:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes back up soon
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (host, int(port)))
        request = (
            f"GET /v1/events/stream HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        yield StalledClient(sock)
    finally:
        sock.close()


async def test_a_listener_whose_queue_fills_is_dropped_without_holding_up_the_others(redis):
    fanout = Fanout(redis, client_buffer=5)
    key = user_stream(uuid.uuid4())  # a stream nobody else writes to
    slow = fanout.join(key, "0-0")
    fast = fanout.join(key, "0-0")
    user = uuid.UUID(key.rsplit(":", 1)[1])
    try:
        ids: list[str] = []
        got: list[str] = []
        for i in range(12):  # one at a time: the fast listener takes each before the next comes
            ids += await publish(redis, event("test.one", user=user, n=i))
            async with asyncio.timeout(5):
                while len(got) < len(ids):
                    assert not fast.overflowed
                    got += [e.id for e in await fast.take(timeout=1.0)]
        assert got == ids
        assert slow.overflowed and slow.entries == deque()  # marked, its queue freed, no longer fed
        assert fanout.readers[key].listeners == {fast}
    finally:
        fanout.leave(key, slow)
        fanout.leave(key, fast)
    assert fanout.readers == {}
