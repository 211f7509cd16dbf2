"""Capacity of server-sent event streams in one API process (uvicorn on a free port, real Redis and PostgreSQL):
streams read Redis through their own pool, so a flood of them leaves logins and probes alone, and the process
serves at most SSE_MAX_STREAMS_PER_PROCESS of them (then 503 with Retry-After)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from tests.api.conftest import assert_problem, bearer, insert_user, login
from tests.support import sse
from tests.support.sse import event, logged_in, publish, serve, sse_settings, stream

# More streams than redis-py's default pool holds (100): on one shared pool they would starve every other request.
FLOOD = 110


# the event-stream tests' own engine and Redis client (decoded replies), shared as fixtures
db = sse.db
redis = sse.redis


async def test_a_flood_of_streams_does_not_block_logins_or_probes(settings, schema, db, redis):
    # a slow heartbeat: the streams' own guard checks are not what this test measures
    flooded = sse_settings(
        settings, sse_heartbeat_seconds=5.0, sse_max_streams_per_user=FLOOD, sse_max_streams_per_process=FLOOD + 10
    )
    limits = httpx.Limits(max_connections=FLOOD + 20, max_keepalive_connections=FLOOD + 20)
    async with (
        serve(flooded) as url,
        httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as http,
        contextlib.AsyncExitStack() as open_streams,
    ):
        account, tokens = await logged_in(http, db)
        headers = bearer(tokens["access_token"])
        # opened all at once, as clients reconnecting after a restart would: a burst the main pool must also absorb
        streams = await asyncio.gather(*(open_streams.enter_async_context(stream(http, headers)) for _ in range(FLOOD)))
        await asyncio.sleep(0.5)  # every stream is waiting in its XREAD

        started = time.monotonic()
        assert (await http.get("/healthz")).status_code == 200
        other = await insert_user(db)
        assert "access_token" in await login(http, other)  # throttle and session writes on the main pool
        me = await http.get("/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        # starved, they would answer 503 (no pooled connection within 2 s), checked above; the time only bounds a
        # hang, with room for a machine shared by other test processes
        assert time.monotonic() - started < 15.0

        # and every stream still works
        [entry] = await publish(redis, event("test.flood", user=account.id))
        got = await asyncio.gather(*(s.next(timeout=10.0) for s in streams))
        assert [(m.event, m.id) if m else None for m in got] == [("test.flood", entry)] * FLOOD


async def test_the_process_cap_answers_503_with_retry_after_and_gives_places_back(settings, schema, db):
    capped = sse_settings(settings, sse_max_streams_per_user=1, sse_max_streams_per_process=2)
    async with serve(capped) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        heads = []
        for _ in range(3):
            _, tokens = await logged_in(http, db)
            heads.append(bearer(tokens["access_token"]))
        a, b, c = heads
        async with stream(http, a):
            # refused by the per-user limit: the place it took in the process is given back
            assert_problem(await http.get("/v1/events/stream", headers=a), 429, "too-many-streams")
            async with stream(http, b):
                full = await http.get("/v1/events/stream", headers=c)
                assert_problem(full, 503, "streams-at-capacity")
                assert int(full.headers["Retry-After"]) >= 1
            # b's stream ended (a's is still open): its place is free again once the server has seen b go
            assert await opens_within(http, c, seconds=10.0)


async def opens_within(http: httpx.AsyncClient, headers: dict[str, str], seconds: float) -> bool:
    """Whether a stream opens (and sends its first heartbeat) within `seconds`, retrying while at capacity."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with http.stream("GET", "/v1/events/stream", headers=headers) as response:
            if response.status_code == 200:
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        return True
            assert response.status_code == 503, response.status_code
        await asyncio.sleep(0.1)
    return False
